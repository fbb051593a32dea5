// Two panes with a draggable divider: side by side on wide screens, stacked
// on narrow ones.  The divider position is remembered per layout.

import { h, persist, persisted } from "./dom.js";

export function split(id, first, second) {
  const firstPane = h("div", { class: "pane" }, first);
  const secondPane = h("div", { class: "pane" }, second);
  const divider = h("div", {
    class: "splitter",
    role: "separator",
    "aria-label": "Resize panels",
    "aria-valuemin": "15",
    "aria-valuemax": "85",
    tabindex: "0",
  });
  const container = h("div", { class: "split", "data-split": id }, firstPane, divider, secondPane);
  const key = () => `split.${id}.${document.body.classList.contains("narrow") ? "narrow" : "wide"}`;
  const apply = () => {
    const percent = persisted(key(), 50);
    container.style.setProperty("--first", `${percent}%`);
    divider.setAttribute("aria-valuenow", String(Math.round(percent)));
  };
  apply();
  window.addEventListener("layoutchange", apply);

  divider.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    divider.setPointerCapture(event.pointerId);
    divider.classList.add("dragging");
    const narrow = document.body.classList.contains("narrow");
    const box = container.getBoundingClientRect();
    const move = (moveEvent) => {
      const offset = narrow ? moveEvent.clientY - box.top : moveEvent.clientX - box.left;
      const size = narrow ? box.height : box.width;
      const percent = Math.min(85, Math.max(15, (offset / size) * 100));
      container.style.setProperty("--first", `${percent}%`);
      divider.setAttribute("aria-valuenow", String(Math.round(percent)));
      persist(key(), percent);
    };
    const stop = () => {
      divider.classList.remove("dragging");
      divider.removeEventListener("pointermove", move);
      divider.removeEventListener("pointerup", stop);
      divider.removeEventListener("pointercancel", stop);
    };
    divider.addEventListener("pointermove", move);
    divider.addEventListener("pointerup", stop);
    divider.addEventListener("pointercancel", stop);
  });
  divider.addEventListener("keydown", (event) => {
    const step = { ArrowLeft: -5, ArrowUp: -5, ArrowRight: 5, ArrowDown: 5 }[event.key];
    if (!step) return;
    const percent = Math.min(85, Math.max(15, persisted(key(), 50) + step));
    persist(key(), percent);
    apply();
  });
  return container;
}
