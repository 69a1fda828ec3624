// The 3D view's controls, run by the k3d snapshot page (sparse3d.report.snapshot_plot) once its plot is loaded,
// with `K3DInstance` the loaded plot. VIEW (filled in by Python): the thresholds of the slider, the index of the
// report's threshold, and per mode the k3d ids of its voxel objects (one per threshold, or one), their colours and
// legends. A mode shows one object: the others are hidden in the scene, so nothing is recomputed or fetched.
const VIEW = /*VIEW*/null;
const modes = Object.keys(VIEW.layers);
let mode = modes.includes('overlay') ? 'overlay' : modes[0], level = VIEW.start;
const esc = s => String(s).replace(/[&<>"]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'})[c]);
const style = document.createElement('style');
style.textContent = `
#s3d-controls{position:absolute;top:6px;left:6px;right:6px;z-index:10;font:13px/1.35 -apple-system,"Segoe UI",Roboto,
 Arial,sans-serif;color:#1f2328;display:flex;flex-wrap:wrap;gap:4px 12px;align-items:center;pointer-events:none}
#s3d-controls>*{pointer-events:auto;background:rgba(255,255,255,.85);border-radius:6px}
#s3d-modes{display:flex;border:1px solid #d0d7de}
#s3d-modes button{font:inherit;border:0;background:none;padding:3px 9px;cursor:pointer;color:inherit}
#s3d-modes button+button{border-left:1px solid #d0d7de}
#s3d-modes button[aria-pressed=true]{background:#0969da;color:#fff}
#s3d-threshold{display:flex;align-items:center;gap:6px;padding:0 4px}
#s3d-threshold input{width:120px;margin:0} #s3d-threshold output{font-variant-numeric:tabular-nums;min-width:2.6em}
#s3d-legend{flex-basis:100%;padding:0 4px;background:none!important}
#s3d-legend span+span{margin-left:.8em}`;
document.head.appendChild(style);
const bar = document.createElement('div');
bar.id = 's3d-controls';
bar.innerHTML = '<div id="s3d-modes" role="group" aria-label="what to show">' +
  modes.map(m => `<button type="button" data-mode="${esc(m)}">${esc(m)}</button>`).join('') + '</div>' +
  `<label id="s3d-threshold">threshold <input type="range" min="0" max="${VIEW.levels.length - 1}" step="1" ` +
  `value="${level}" aria-label="threshold"><output></output></label><div id="s3d-legend" aria-live="polite"></div>`;
document.body.appendChild(bar);
const slider = bar.querySelector('input'), readout = bar.querySelector('output'), legend = bar.querySelector('#s3d-legend');

function show() {
  for (const m of modes) {
    VIEW.layers[m].forEach((id, k) => {
      const obj = K3DInstance.getObjectById(id);
      if (obj) obj.visible = m === mode && (VIEW.layers[m].length === 1 || k === level);
    });
  }
  const k = VIEW.layers[mode].length === 1 ? 0 : level, colors = VIEW.colors[mode];
  legend.innerHTML = VIEW.legends[mode][k].map((text, i) => i < colors.length ?
    `<span><span style="color:${colors[i]}">&#9632;</span>&nbsp;${esc(text)}</span>` :
    `<span><b>${esc(text)}</b></span>`).join('');
  readout.textContent = VIEW.levels[level].toFixed(2);
  slider.disabled = VIEW.layers[mode].length === 1;          // the ground truth has no threshold
  bar.querySelectorAll('button').forEach(b => b.setAttribute('aria-pressed', String(b.dataset.mode === mode)));
  document.body.dataset.mode = mode;
  document.body.dataset.threshold = VIEW.levels[level];
  K3DInstance.render();
}
bar.querySelectorAll('button').forEach(b => b.addEventListener('click', () => { mode = b.dataset.mode; show(); }));
slider.addEventListener('input', () => { level = Number(slider.value); show(); });
show();
