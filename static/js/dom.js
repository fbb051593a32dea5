// Small DOM and formatting helpers.

// Where llamaswap lives as this browser sees it: "/" normally, "/prefix/"
// behind a proxy that mounts it under a path.  index.html's <base> names
// the UI's own folder, whatever the page's depth.
export const ROOT = new URL("../", document.baseURI).pathname;

// The address of one of llamaswap's own paths ("/api/events").
export function url(path) {
  return ROOT + path.replace(/^\//, "");
}

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === "class") {
      element.className = value;
    } else if (name === "style" && typeof value === "object") {
      Object.assign(element.style, value);
    } else if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else {
      element.setAttribute(name, value === true ? "" : value);
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

// A two-column table of [label, value] pairs: settings, headers, facts.
export function pairsTable(pairs, attributes = {}) {
  return h(
    "table",
    { class: "headers", ...attributes },
    h("tbody", {}, pairs.map(([label, value]) => h("tr", {}, h("th", { scope: "row" }, label), h("td", {}, value)))),
  );
}

export function persisted(key, fallback) {
  try {
    const raw = localStorage.getItem("llamaswap." + key);
    return raw === null ? fallback : JSON.parse(raw);
  } catch (error) {
    return fallback;
  }
}

export function persist(key, value) {
  try {
    localStorage.setItem("llamaswap." + key, JSON.stringify(value));
  } catch (error) {
    /* private mode: keep it for this page only */
  }
}

export function formatNumber(value) {
  return Number(value).toLocaleString("en-US");
}

export function formatSpeed(value) {
  return value < 0 ? "–" : `${value.toFixed(value >= 100 ? 0 : 1)}`;
}

export function formatDuration(ms) {
  if (ms < 1000) return `${ms} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

export function relativeTime(timestamp, now = Date.now()) {
  const seconds = Math.max(0, Math.round((now - Date.parse(timestamp)) / 1000));
  if (seconds < 5) return "just now";
  if (seconds < 60) return `${seconds}s ago`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes}m ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 48) return `${hours}h ago`;
  return `${Math.round(hours / 24)}d ago`;
}

// Percentile by nearest rank of an ascending array.
export function percentile(sorted, fraction) {
  if (!sorted.length) return null;
  const rank = Math.ceil(fraction * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

export function modelPath(id) {
  return id.split("/").map(encodeURIComponent).join("/");
}

// The JSON event of one server-sent-events line ("data: {...}"), or null
// for anything else (comments, [DONE], a line that is not JSON).
export function sseEvent(line) {
  if (!line.startsWith("data:")) return null;
  const payload = line.slice(5).trim();
  if (!payload || payload === "[DONE]") return null;
  try {
    return JSON.parse(payload);
  } catch (error) {
    return null;
  }
}
