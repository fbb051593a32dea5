// Entry point: header behaviour (title, theme, connection dot), client-side
// routing between the pages, and the event stream connection.

import { persist, persisted, url } from "./dom.js";
import { activityPage } from "./pages/activity.js";
import { hardwarePage } from "./pages/hardware.js";
import { logsPage } from "./pages/logs.js";
import { modelPage } from "./pages/model.js";
import { performancePage } from "./pages/performance.js";
import { playgroundPage } from "./pages/playground.js";
import { applyTheme, settingsPage } from "./pages/settings.js";
import { modelsPage } from "./pages/models.js";
import { store } from "./store.js";

const PAGES = {
  playground: playgroundPage,
  logs: logsPage,
  models: modelsPage,
  activity: activityPage,
  performance: performancePage,
  hardware: hardwarePage,
  settings: settingsPage,
};
const DEFAULT_PAGE = "models";
const NARROW = window.matchMedia("(max-width: 760px)");

function setupTitle() {
  const title = document.getElementById("app-title");
  title.contentEditable = "plaintext-only";
  if (title.contentEditable !== "plaintext-only") title.contentEditable = "true";
  const apply = (text) => {
    title.textContent = text;
    document.title = text;
  };
  apply(persisted("title", "llamaswap"));
  title.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      title.blur();
    } else if (event.key === "Escape") {
      apply(persisted("title", "llamaswap"));
      title.blur();
    }
  });
  title.addEventListener("blur", () => {
    const text = title.textContent.trim() || "llamaswap";
    persist("title", text);
    apply(text);
  });
}

function setupTheme() {
  const button = document.getElementById("theme-toggle");
  const system = window.matchMedia("(prefers-color-scheme: dark)");
  const current = () => document.documentElement.dataset.theme;
  button.addEventListener("click", () => {
    const next = current() === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    persist("theme", next);
    const radio = document.querySelector(`input[name="theme"][value="${next}"]`);
    if (radio) radio.checked = true;
  });
  system.addEventListener("change", () => applyTheme(persisted("theme", null)));
}

function setupConnection() {
  const badge = document.getElementById("connection");
  const show = (state) => {
    badge.dataset.state = state;
    badge.querySelector(".label").textContent = state;
    badge.title = `Event stream: ${state}`;
  };
  show(store.connection);
  store.on("connection", show);
}

function setupLayout() {
  const apply = () => {
    document.body.classList.toggle("narrow", NARROW.matches);
    window.dispatchEvent(new Event("layoutchange"));
  };
  NARROW.addEventListener("change", apply);
  apply();
}

let cleanup = null;

// The part of the page's path below the UI's folder ("models/alpha").
function uiPath(path) {
  const folder = url("/ui/");
  return path.startsWith(folder) ? path.slice(folder.length) : "";
}

function pageFromPath(path) {
  const name = uiPath(path).split("/")[0];
  return PAGES[name] ? name : DEFAULT_PAGE;
}

// models/<id>: one model's page (ids may hold slashes)
function modelFromPath(path) {
  const match = uiPath(path).match(/^models\/(.+)$/);
  return match ? match[1].split("/").map(decodeURIComponent).join("/") : null;
}

function show(name) {
  const container = document.getElementById("page");
  if (cleanup) cleanup();
  container.replaceChildren();
  container.dataset.page = name;
  const model = name === "models" ? modelFromPath(location.pathname) : null;
  cleanup = model ? modelPage(container, model) : PAGES[name](container);
  for (const link of document.querySelectorAll(".tabs a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function setupRouting() {
  document.body.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-page]");
    if (!link || event.metaKey || event.ctrlKey || event.shiftKey) return;
    event.preventDefault();
    if (location.pathname !== link.pathname) history.pushState(null, "", link.pathname);
    show(link.dataset.page);
  });
  window.addEventListener("popstate", () => show(pageFromPath(location.pathname)));
  show(pageFromPath(location.pathname));
}

setupLayout();
setupTitle();
setupTheme();
setupConnection();
setupRouting();
store.connect();
