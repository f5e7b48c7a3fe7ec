/* The medical report's linked volume views: one NiiVue per canvas ("volume-views" lists them), crosshairs
   broadcast to one another, one slice orientation for all, the value under the crosshair in each caption. */
"use strict";
(async () => {
  const spec = await SciReport.json("volume-views");
  const viewers = [];
  for (const view of spec.views) {
    const nv = new niivue.Niivue({backColor: [0, 0, 0, 1], crosshairColor: [1, 0.8, 0, 1], show3Dcrosshair: true,
                                  isResizeCanvas: true, logLevel: "error"});
    await nv.attachToCanvas(document.getElementById(view.canvas));
    await nv.loadFromArrayBuffer(SciReport.bytes(view.block), view.name);
    const volume = nv.volumes[0];
    volume.colormap = view.colormap;
    [volume.cal_min, volume.cal_max] = view.window;
    nv.updateGLVolume();
    const value = document.getElementById(view.canvas + "-value");
    nv.onLocationChange = data => {
      const v = data.values && data.values[0];
      value.textContent = v ? `\u00b7 ${Number(v.value).toPrecision(4)} at voxel ${v.vox.join(", ")}` : "";
    };
    viewers.push(nv);
  }
  viewers.forEach(nv => nv.broadcastTo(viewers.filter(other => other !== nv), {"2d": true, "3d": true}));
  const orientation = document.getElementById("slice-type");
  function orient() {
    const type = {axial: "sliceTypeAxial", coronal: "sliceTypeCoronal", sagittal: "sliceTypeSagittal",
                  multiplanar: "sliceTypeMultiplanar"}[orientation.value];
    viewers.forEach(nv => nv.setSliceType(nv[type]));
  }
  orientation.addEventListener("change", orient);
  orient();
  window.volumeViewers = viewers;  // for the console (and the browser tests)
  requestAnimationFrame(() => requestAnimationFrame(() => SciReport.ready()));
})().catch(SciReport.fail);
