// Images: a prompt to /v1/images/generations, the pictures shown as they
// come back (base64 or a link), each with the prompt as its description.

import { h } from "../dom.js";
import { panel, post, run } from "./common.js";

const SIZES = ["256x256", "512x512", "768x768", "1024x1024", "1024x1792", "1792x1024"];

export function imagesTab(context) {
  const prompt = h("textarea", { rows: 3, placeholder: "Describe the picture", "aria-label": "Image prompt" });
  const size = h("select", { "aria-label": "Image size" }, SIZES.map((value) => h("option", { value, selected: value === "512x512" }, value)));
  const count = h("input", { type: "number", min: 1, max: 8, value: 1, "aria-label": "Number of images" });
  const generate = h("button", { class: "button primary", type: "submit" }, "Generate");
  const gallery = h("div", { class: "gallery", "data-testid": "images" });
  const form = h("form", { class: "tab-form" }, prompt, h("div", { class: "composer-actions" }, h("label", {}, "Size ", size), h("label", {}, "Count ", count), generate));
  const { status, element } = panel("images", form, gallery);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text) return;
    const modelId = context.model();
    run({ status, modelId, controls: [generate] }, async () => {
      const response = await post("/v1/images/generations", {
        model: modelId,
        prompt: text,
        n: Number(count.value) || 1,
        size: size.value,
        response_format: "b64_json",
      });
      const { data = [] } = await response.json();
      const images = data
        .map((item) => ({ src: item.b64_json ? `data:image/png;base64,${item.b64_json}` : item.url, alt: item.revised_prompt || text }))
        .filter((item) => item.src);
      gallery.prepend(...images.map((item) => h("figure", {}, h("img", { src: item.src, alt: item.alt }), h("figcaption", {}, item.alt))));
      return `${images.length} image${images.length === 1 ? "" : "s"} from ${modelId}`;
    });
  });
  return { element, cleanup() {} };
}
