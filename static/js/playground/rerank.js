// Rerank: a query and documents (one per line) to /v1/rerank, the
// documents listed from most to least relevant with their scores.

import { h } from "../dom.js";
import { panel, post, run } from "./common.js";

export function rerankTab(context) {
  const query = h("input", { placeholder: "What are you looking for?", "aria-label": "Query" });
  const documents = h("textarea", { rows: 6, placeholder: "One document per line", "aria-label": "Documents" });
  const go = h("button", { class: "button primary", type: "submit" }, "Rerank");
  const results = h("div", { "data-testid": "rerank" });
  const form = h("form", { class: "tab-form" }, query, documents, h("div", { class: "composer-actions" }, go));
  const { status, element } = panel("rerank", form, results);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const lines = documents.value.split("\n").map((line) => line.trim()).filter(Boolean);
    if (!query.value.trim() || !lines.length) {
      status.textContent = "a query and at least one document are needed";
      return;
    }
    const modelId = context.model();
    run({ status, modelId, controls: [go] }, async () => {
      const answer = await (await post("/v1/rerank", { model: modelId, query: query.value.trim(), documents: lines })).json();
      const ranked = [...(answer.results || answer.data || [])].sort((a, b) => (b.relevance_score ?? b.score ?? 0) - (a.relevance_score ?? a.score ?? 0));
      results.replaceChildren(
        h(
          "table",
          { class: "table" },
          h("thead", {}, h("tr", {}, h("th", {}, "Rank"), h("th", {}, "Score"), h("th", {}, "Document"))),
          h(
            "tbody",
            {},
            ranked.map((result, rank) =>
              h("tr", {}, h("td", {}, rank + 1), h("td", {}, Number(result.relevance_score ?? result.score ?? 0).toFixed(4)), h("td", {}, lines[result.index] ?? `#${result.index}`)),
            ),
          ),
        ),
      );
      return `${ranked.length} documents ranked by ${modelId}`;
    });
  });
  return { element, cleanup() {} };
}
