/* The molecules report page: the candidates table (SciReport.table) and the 3-D view of the selected
   molecule (3Dmol.js). The data block "molecules" holds {columns, rows, format, records, depictions}. */
"use strict";
(async () => {
  const data = await SciReport.json("molecules");
  data.rows.forEach(row => { row._2d = row._r >= 0 ? data.depictions[row._r] : ""; });
  const element = document.getElementById("viewer3d");
  const viewer = $3Dmol.createViewer(element, {backgroundColor: "white"});
  window.moleculeViewer = viewer;  // for the console (and the browser tests)
  const mark = document.createElement("div");
  mark.className = "synthetic-mark";
  mark.textContent = "SYNTHETIC";
  if (document.querySelector(".synthetic-banner")) element.append(mark);
  const selected = document.getElementById("selected");
  function show(row) {
    viewer.clear();
    const facts = ["index", "formula", "smiles", "stable", "valid", "qed", "sa"].filter(k => k in row && row[k] !== "")
      .map(k => `${k} ${row[k]}`).join(" \u00b7 ");
    if (row._r < 0) {
      selected.textContent = `Molecule ${row.index} has no structure: its sample diverged (non-finite coordinates).`;
      viewer.render();
      return;
    }
    viewer.addModel(data.records[row._r], data.format);
    viewer.setStyle({}, {stick: {radius: 0.14}, sphere: {scale: 0.25}});
    viewer.zoomTo();
    viewer.render();
    selected.textContent = facts;
  }
  const table = SciReport.table(document.getElementById("candidates"), data.columns, data.rows,
                                {onSelect: show, bad: row => row._bad});
  const first = data.rows.find(row => row._r >= 0);
  if (first) table.select(first);
  viewer.render(() => SciReport.ready());
})().catch(SciReport.fail);
