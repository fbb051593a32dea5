// Playground: try any model from the browser.  One model picker; the
// model's declared capabilities decide which tabs apply (a model that
// declares none may be tried with all of them): chat, images, speech,
// transcription, rerank and a concurrency tester.

import { h, persist, persisted, url } from "../dom.js";
import { chatTab } from "../playground/chat.js";
import { concurrencyTab } from "../playground/concurrency.js";
import { imagesTab } from "../playground/images.js";
import { rerankTab } from "../playground/rerank.js";
import { speechTab } from "../playground/speech.js";
import { transcribeTab } from "../playground/transcribe.js";
import { store } from "../store.js";

const TABS = [
  { id: "chat", label: "Chat", build: chatTab },
  { id: "images", label: "Images", build: imagesTab },
  { id: "speech", label: "Speech", build: speechTab },
  { id: "transcription", label: "Transcription", build: transcribeTab },
  { id: "rerank", label: "Rerank", build: rerankTab },
  { id: "concurrency", label: "Concurrency", build: concurrencyTab },
];
const EVERY_TAB = TABS.map((tab) => tab.id);

// The tabs a /v1/models record's capabilities allow.
export function tabsFor(record) {
  const flags = record.capabilities || {};
  const outputs = (record.architecture || {}).output_modalities || [];
  if (!record.capabilities && !record.architecture) return EVERY_TAB;
  const chats = outputs.includes("text") || (!outputs.length && !flags.reranker);
  const tabs = new Set();
  if (chats) tabs.add("chat").add("concurrency");
  if (flags.image_generation || flags.image_to_image) tabs.add("images");
  if (flags.audio_speech) tabs.add("speech");
  if (flags.audio_transcriptions) tabs.add("transcription");
  if (flags.reranker) tabs.add("rerank");
  return tabs.size ? EVERY_TAB.filter((id) => tabs.has(id)) : EVERY_TAB;
}

export function playgroundPage(container) {
  const saved = persisted("playgroundTab", { model: persisted("playground", {}).model || "", tab: "chat" });
  const model = h("select", { "aria-label": "Model", "data-testid": "playground-model" });
  const tabList = h("div", { class: "tablist", role: "tablist", "aria-label": "Playground" });
  const panels = h("div", { class: "playground-body" });
  container.append(h("section", { class: "card playground", "aria-label": "Playground" }, h("div", { class: "card-header" }, h("h2", {}, "Playground"), model, tabList), panels));

  const context = { model: () => model.value };
  const built = new Map(); // tab id -> { element, cleanup, modelChanged }
  let records = [];
  let current = saved.tab;

  const save = () => persist("playgroundTab", { model: model.value, tab: current });
  const allowed = () => {
    const record = records.find((entry) => entry.id === model.value);
    return record ? tabsFor(record) : EVERY_TAB;
  };

  const select = (id, focus = false) => {
    const tabs = allowed();
    current = tabs.includes(id) ? id : tabs[0];
    for (const tab of TABS) {
      const button = tabList.querySelector(`[data-tab="${tab.id}"]`);
      button.hidden = !tabs.includes(tab.id);
      button.setAttribute("aria-selected", String(tab.id === current));
      button.tabIndex = tab.id === current ? 0 : -1;
    }
    if (!built.has(current)) {
      const tab = TABS.find((entry) => entry.id === current).build(context);
      tab.element.setAttribute("role", "tabpanel");
      tab.element.id = `panel-${current}`;
      tab.element.setAttribute("aria-labelledby", `tab-${current}`);
      built.set(current, tab);
      panels.append(tab.element);
      if (tab.modelChanged && model.value) tab.modelChanged(model.value);
    }
    for (const [id, tab] of built) tab.element.hidden = id !== current;
    if (focus) tabList.querySelector(`[data-tab="${current}"]`).focus();
    save();
  };

  for (const tab of TABS) {
    const button = h("button", { type: "button", role: "tab", id: `tab-${tab.id}`, "aria-controls": `panel-${tab.id}`, "data-tab": tab.id }, tab.label);
    button.addEventListener("click", () => select(tab.id));
    tabList.append(button);
  }
  // arrow keys move between the tabs that apply
  tabList.addEventListener("keydown", (event) => {
    const tabs = allowed();
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (!step) return;
    event.preventDefault();
    select(tabs[(tabs.indexOf(current) + step + tabs.length) % tabs.length], true);
  });

  const fillModels = (list) => {
    records = list;
    const wanted = model.value || saved.model;
    model.replaceChildren(...records.map((record) => h("option", { value: record.id }, record.name && record.name !== record.id ? `${record.id} — ${record.name}` : record.id)));
    if (records.some((record) => record.id === wanted)) model.value = wanted;
    select(current);
  };

  // /v1/models has the capabilities; ask again (at most every 200 ms) when
  // the models change
  let timer = null;
  let alive = true;
  const refresh = async () => {
    try {
      const response = await fetch(url("/v1/models"));
      if (response.ok && alive) fillModels(((await response.json()).data || []).filter((record) => record.id));
    } catch (error) {
      /* the connection badge says the server is gone; keep what we have */
    }
  };
  const later = () => {
    clearTimeout(timer);
    timer = setTimeout(refresh, 200);
  };

  model.addEventListener("change", () => {
    select(current);
    for (const tab of built.values()) if (tab.modelChanged) tab.modelChanged(model.value);
  });
  select(current);
  refresh();
  const unsubscribe = store.on("models", later);
  return () => {
    alive = false;
    clearTimeout(timer);
    unsubscribe();
    for (const tab of built.values()) tab.cleanup();
  };
}
