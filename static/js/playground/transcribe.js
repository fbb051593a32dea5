// Transcription: an audio file from this computer to
// /v1/audio/transcriptions (a multipart upload), the text shown.

import { h } from "../dom.js";
import { panel, post, run } from "./common.js";

export function transcribeTab(context) {
  const file = h("input", { type: "file", accept: "audio/*,video/*", "aria-label": "Audio file" });
  const language = h("input", { placeholder: "auto", size: 6, "aria-label": "Language" });
  const go = h("button", { class: "button primary", type: "submit" }, "Transcribe");
  const text = h("pre", { class: "transcript", "data-testid": "transcript" });
  const form = h("form", { class: "tab-form" }, h("div", { class: "composer-actions" }, file, h("label", {}, "Language ", language), go));
  const { status, element } = panel("transcription", form, text);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = file.files[0];
    if (!chosen) {
      status.textContent = "choose an audio file first";
      return;
    }
    const modelId = context.model();
    run({ status, modelId, controls: [go] }, async () => {
      const form = new FormData();
      form.append("model", modelId);
      form.append("file", chosen, chosen.name);
      form.append("response_format", "json");
      if (language.value.trim()) form.append("language", language.value.trim());
      const answer = await (await post("/v1/audio/transcriptions", form)).json();
      text.textContent = answer.text ?? JSON.stringify(answer, null, 2);
      return `${chosen.name} (${(chosen.size / 1024).toFixed(1)} KB) by ${modelId}`;
    });
  });
  return { element, cleanup() {} };
}
