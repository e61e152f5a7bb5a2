// Small line charts drawn as SVG by hand: no library, nothing fetched.

const NS = "http://www.w3.org/2000/svg";
const W = 300, H = 90, LEFT = 34, RIGHT = 4, TOP = 8, BOTTOM = 14;
const COLORS = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280"];

function el(name, attrs, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(v) {
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2).replace(/\.?0+$/, "") || "0";
}

/**
 * Draw `series` ({name: [[t_ms, value|null], ...]}) over the `windowMs` before `now`.
 * A null value is a gap (nothing measured then), drawn as a break in the line.
 */
export function drawChart(svg, series, now, windowMs) {
  svg.replaceChildren();
  const names = Object.keys(series);
  let max = 0;
  for (const name of names) {
    for (const [, v] of series[name]) if (v !== null && v > max) max = v;
  }
  max = max > 0 ? max * 1.15 : 1;
  const x = (t) => LEFT + ((t - (now - windowMs)) / windowMs) * (W - LEFT - RIGHT);
  const y = (v) => TOP + (1 - v / max) * (H - TOP - BOTTOM);

  svg.append(el("line", { x1: LEFT, y1: y(0), x2: W - RIGHT, y2: y(0), class: "axis" }));
  svg.append(el("line", { x1: LEFT, y1: TOP, x2: LEFT, y2: y(0), class: "axis" }));
  svg.append(el("text", { x: LEFT - 3, y: TOP + 4, class: "tick", "text-anchor": "end" }, fmt(max)));
  svg.append(el("text", { x: LEFT - 3, y: y(0), class: "tick", "text-anchor": "end" }, "0"));
  const span = windowMs >= 120000 ? `-${Math.round(windowMs / 60000)} min` : `-${Math.round(windowMs / 1000)} s`;
  svg.append(el("text", { x: LEFT, y: H - 2, class: "tick" }, span));
  svg.append(el("text", { x: W - RIGHT, y: H - 2, class: "tick", "text-anchor": "end" }, "now"));

  names.forEach((name, i) => {
    const color = COLORS[i % COLORS.length];
    let d = "", pen = "M", last = null;
    for (const [t, v] of series[name]) {
      if (t < now - windowMs) continue;
      if (v === null) { pen = "M"; continue; }
      d += `${pen}${x(t).toFixed(1)},${y(v).toFixed(1)} `;
      pen = "L";
      last = v;
      svg.append(el("circle", { cx: x(t).toFixed(1), cy: y(v).toFixed(1), r: 1.3, fill: color }));
    }
    if (d) svg.append(el("path", { d, class: "line", stroke: color }));
    const label = names.length > 1 ? `${name} ` : "";
    if (last !== null) {
      svg.append(el("text", { x: W - RIGHT, y: TOP + 4 + 10 * i, class: "value", "text-anchor": "end", fill: color },
        `${label}${fmt(last)}`));
    }
  });
  if (!names.length) {
    svg.append(el("text", { x: (W + LEFT) / 2, y: H / 2, class: "tick", "text-anchor": "middle" }, "no data yet"));
  }
}
