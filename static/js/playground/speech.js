// Speech: text to /v1/audio/speech, the answer played in an audio player
// with a link to save it.  Voices come from /v1/audio/voices when the model
// lists them -- asked only of a model already running, as asking would
// otherwise load it -- and any name can be typed.

import { h, url } from "../dom.js";
import { store } from "../store.js";
import { panel, post, run } from "./common.js";

export function speechTab(context) {
  const text = h("textarea", { rows: 4, placeholder: "Text to speak", "aria-label": "Text to speak" });
  const voices = h("datalist", { id: "playground-voices" });
  const voice = h("input", { value: "alloy", list: "playground-voices", "aria-label": "Voice" });
  const format = h("select", { "aria-label": "Audio format" }, ["mp3", "wav", "opus", "flac"].map((value) => h("option", { value }, value)));
  const speak = h("button", { class: "button primary", type: "submit" }, "Speak");
  const output = h("div", { class: "audio-output", "data-testid": "speech" });
  const form = h("form", { class: "tab-form" }, text, h("div", { class: "composer-actions" }, h("label", {}, "Voice ", voice, voices), h("label", {}, "Format ", format), speak));
  const { status, element } = panel("speech", form, output);
  let objectUrl = null;

  let listed = null; // the model whose voices the list holds
  const listVoices = async (modelId) => {
    const model = store.models.find((entry) => entry.id === modelId);
    if (listed === modelId || !model || model.state !== "ready") return;
    listed = modelId;
    voices.replaceChildren();
    try {
      const response = await fetch(url(`/v1/audio/voices?${new URLSearchParams({ model: modelId })}`));
      if (!response.ok) return;
      const body = await response.json();
      const names = (Array.isArray(body) ? body : body.voices || body.data || []).map((entry) => (typeof entry === "string" ? entry : entry.id || entry.name)).filter(Boolean);
      voices.replaceChildren(...names.map((name) => h("option", { value: name })));
    } catch (error) {
      /* no voice list: any name can be typed */
    }
  };

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const words = text.value.trim();
    if (!words) return;
    const modelId = context.model();
    run({ status, modelId, controls: [speak] }, async () => {
      const response = await post("/v1/audio/speech", { model: modelId, input: words, voice: voice.value.trim() || "alloy", response_format: format.value });
      const blob = await response.blob();
      if (objectUrl) URL.revokeObjectURL(objectUrl);
      objectUrl = URL.createObjectURL(blob);
      const extension = (blob.type.split("/")[1] || format.value).replace("mpeg", "mp3");
      output.replaceChildren(
        h("audio", { controls: true, src: objectUrl, "aria-label": "Spoken text" }),
        h("a", { href: objectUrl, download: `speech.${extension}` }, `Save (${(blob.size / 1024).toFixed(1)} KB)`),
      );
      return `${blob.type || "audio"} from ${modelId}`;
    });
  });
  voice.addEventListener("focus", () => listVoices(context.model()));
  return {
    element,
    modelChanged: () => {
      listed = null;
      voices.replaceChildren();
    },
    cleanup() {
      if (objectUrl) URL.revokeObjectURL(objectUrl);
    },
  };
}
