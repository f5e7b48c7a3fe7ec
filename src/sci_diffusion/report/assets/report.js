/* sci-diffusion report pages: what every domain's page shares.
   SciReport.json(id)   the data block <script id=id> (plain JSON, or gzip + base64 JSON), as a Promise
   SciReport.bytes(id)  a base64 block as an ArrayBuffer
   SciReport.table(...) a sortable, filterable table of rows
   SciReport.ready()    marks the page as drawn (window.reportReady), for people and for the browser tests
   SciReport.fail(e)    shows an error on the page and in the console */
"use strict";
const SciReport = (() => {
  function decodeBase64(text) {
    const binary = atob(text.trim());
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }
  async function json(id) {
    const element = document.getElementById(id);
    if (!element) throw new Error(`the page has no data block ${id}`);
    if (element.type === "application/json") return JSON.parse(element.textContent);
    const stream = new Blob([decodeBase64(element.textContent)]).stream().pipeThrough(new DecompressionStream("gzip"));
    return JSON.parse(await new Response(stream).text());
  }
  function bytes(id) {
    const element = document.getElementById(id);
    if (!element) throw new Error(`the page has no data block ${id}`);
    return decodeBase64(element.textContent).buffer;
  }
  // a filter term: "qed>0.5", "valid=1", "sa<=4", "smiles~CC" or a bare word matched anywhere in the row
  const TERM = /^([A-Za-z_][\w\[\]. ]*?)(>=|<=|!=|=|>|<|~)(.*)$/;
  function parseFilter(text) {
    return text.trim().split(/\s+(?:and\s+)?/i).filter(Boolean).map(term => {
      const match = TERM.exec(term);
      if (!match) return {word: term.toLowerCase()};
      return {column: match[1].trim().toLowerCase(), op: match[2], value: match[3]};
    });
  }
  function passes(row, columns, terms) {
    return terms.every(term => {
      if (term.word !== undefined)
        return columns.some(c => c.kind !== "html" && String(row[c.key] ?? "").toLowerCase().includes(term.word));
      const column = columns.find(c => c.key.toLowerCase() === term.column || c.label.toLowerCase() === term.column
                                       || c.key.toLowerCase().split(" [")[0] === term.column);
      if (!column) return false;
      const cell = row[column.key];
      if (term.op === "~") return String(cell ?? "").toLowerCase().includes(term.value.toLowerCase());
      const a = Number(cell), b = Number(term.value);
      const numeric = cell !== "" && cell !== null && cell !== undefined && !isNaN(a) && term.value !== "" && !isNaN(b);
      const [x, y] = numeric ? [a, b] : [String(cell ?? ""), term.value];
      switch (term.op) {
        case ">": return numeric && x > y;   case "<": return numeric && x < y;
        case ">=": return numeric && x >= y; case "<=": return numeric && x <= y;
        case "=": return x === y;            case "!=": return x !== y;
      }
      return false;
    });
  }
  function compare(a, b) {
    const empty = v => v === "" || v === null || v === undefined;
    if (empty(a) || empty(b)) return empty(a) - empty(b);  // empty cells last
    const x = Number(a), y = Number(b);
    if (!isNaN(x) && !isNaN(y)) return x - y;
    return String(a).localeCompare(String(b));
  }
  function format(value, column) {
    if (value === null || value === undefined) return "";
    if (column.kind === "number" && typeof value === "number" && !Number.isInteger(value)) return value.toPrecision(4);
    return String(value);
  }
  /* columns: [{key, label, kind: "number" | "text" | "html"}]; rows: [{key: value}]; options.onSelect(row),
     options.bad(row) -> marks a row (a failed molecule), options.placeholder for the filter box */
  function table(container, columns, rows, options = {}) {
    const tools = document.createElement("div");
    tools.className = "sr-table-tools";
    const filter = document.createElement("input");
    filter.type = "search";
    filter.placeholder = options.placeholder || "filter: words, or column>value, column=value, column~text";
    const count = document.createElement("span");
    count.className = "count";
    tools.append(filter, count);
    const scroll = document.createElement("div");
    scroll.className = "sr-scroll";
    const element = document.createElement("table");
    element.className = "sr";
    const head = element.createTHead().insertRow();
    const body = element.createTBody();
    scroll.append(element);
    container.append(tools, scroll);
    let sortKey = null, direction = 1, selected = null, shown = rows;
    columns.forEach(column => {
      const th = document.createElement("th");
      th.textContent = column.label;
      th.title = "sort by " + column.label;
      th.addEventListener("click", () => {
        direction = sortKey === column.key ? -direction : 1;
        sortKey = column.key;
        head.querySelectorAll("th").forEach(h => h.classList.remove("asc", "desc"));
        th.classList.add(direction > 0 ? "asc" : "desc");
        draw();
      });
      head.append(th);
    });
    function draw() {
      const terms = parseFilter(filter.value);
      shown = rows.filter(row => passes(row, columns, terms));
      if (sortKey !== null) shown = [...shown].sort((a, b) => direction * compare(a[sortKey], b[sortKey]));
      body.replaceChildren(...shown.map(row => {
        const tr = document.createElement("tr");
        if (options.bad && options.bad(row)) tr.classList.add("bad");
        if (row === selected) tr.classList.add("selected");
        columns.forEach(column => {
          const td = tr.insertCell();
          if (column.kind === "html") td.innerHTML = row[column.key] || "";
          else td.textContent = format(row[column.key], column);
          if (column.kind === "number") td.className = "num";
        });
        tr.addEventListener("click", () => select(row, tr));
        return tr;
      }));
      count.textContent = `${shown.length} of ${rows.length} shown`;
    }
    function select(row, tr) {
      selected = row;
      body.querySelectorAll("tr.selected").forEach(r => r.classList.remove("selected"));
      if (tr) tr.classList.add("selected");
      if (options.onSelect) options.onSelect(row);
    }
    filter.addEventListener("input", draw);
    draw();
    return {select: row => select(row, null), shown: () => shown, filter, redraw: draw};
  }
  function ready() { window.reportReady = true; document.body.dataset.ready = "1"; }
  function fail(error) {
    console.error(error);
    const box = document.createElement("p");
    box.className = "error-box";
    box.textContent = "This page could not be drawn: " + (error && error.message ? error.message : error);
    document.querySelector("main").prepend(box);
  }
  return {json, bytes, table, ready, fail, parseFilter, passes};
})();
