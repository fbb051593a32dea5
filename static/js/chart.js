// A small line chart in SVG: one or more series of (time, value) points on
// a shared time axis, a light grid and the latest value.  No library.

const SVG = "http://www.w3.org/2000/svg";

function node(tag, attributes = {}) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  return element;
}

// series: [{ label, points: [[ms, value], ...], className }]
export function lineChart(series, { unit = "", max = null, height = 140, label = "" } = {}) {
  const width = 600;
  const pad = { left: 58, right: 8, top: 8, bottom: 18 };
  const svg = node("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": label });
  const all = series.flatMap((entry) => entry.points);
  if (!all.length) {
    const text = node("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "chart-empty" });
    text.textContent = "no data yet";
    svg.append(text);
    return svg;
  }
  const times = all.map(([time]) => time);
  const start = Math.min(...times);
  const end = Math.max(...times, start + 1000);
  const top = max !== null ? max : Math.max(1, ...all.map(([, value]) => value)) * 1.1;
  const x = (time) => pad.left + ((time - start) / (end - start)) * (width - pad.left - pad.right);
  const y = (value) => pad.top + (1 - Math.min(value, top) / top) * (height - pad.top - pad.bottom);
  for (const fraction of [0, 0.5, 1]) {
    const value = top * fraction;
    svg.append(node("line", { x1: pad.left, x2: width - pad.right, y1: y(value), y2: y(value), class: "chart-grid" }));
    const tick = node("text", { x: pad.left - 4, y: y(value) + 4, "text-anchor": "end", class: "chart-tick" });
    tick.textContent = `${value >= 100 ? Math.round(value) : value.toFixed(1)}${unit}`;
    svg.append(tick);
  }
  const span = node("text", { x: width - pad.right, y: height - 4, "text-anchor": "end", class: "chart-tick" });
  span.textContent = `${Math.round((end - start) / 60000)} min`;
  svg.append(span);
  series.forEach((entry, index) => {
    if (!entry.points.length) return;
    const path = entry.points.map(([time, value], at) => `${at ? "L" : "M"}${x(time).toFixed(1)},${y(value).toFixed(1)}`).join("");
    const name = entry.className || `series-${index}`;
    svg.append(node("path", { d: path, class: `chart-line ${name}` }));
    const [time, value] = entry.points[entry.points.length - 1];
    svg.append(node("circle", { cx: x(time).toFixed(1), cy: y(value).toFixed(1), r: 3, class: `chart-dot ${name}` }));
  });
  return svg;
}
