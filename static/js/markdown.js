// A little Markdown for model answers, built as DOM nodes from text (never
// innerHTML): fenced code blocks, inline code, bold, italics, headings,
// bullet and numbered lists, paragraphs.

function inline(text) {
  const fragment = document.createDocumentFragment();
  const pattern = /(`[^`]+`|\*\*[^*]+\*\*|\*[^*\s][^*]*\*)/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    if (match.index > last) fragment.append(document.createTextNode(text.slice(last, match.index)));
    const token = match[0];
    let element;
    if (token.startsWith("`")) {
      element = document.createElement("code");
      element.textContent = token.slice(1, -1);
    } else if (token.startsWith("**")) {
      element = document.createElement("strong");
      element.textContent = token.slice(2, -2);
    } else {
      element = document.createElement("em");
      element.textContent = token.slice(1, -1);
    }
    fragment.append(element);
    last = match.index + token.length;
  }
  if (last < text.length) fragment.append(document.createTextNode(text.slice(last)));
  return fragment;
}

export function renderMarkdown(text) {
  const root = document.createElement("div");
  root.className = "markdown";
  const lines = text.split("\n");
  let paragraph = [];
  let list = null;
  const flush = () => {
    if (paragraph.length) {
      const p = document.createElement("p");
      paragraph.forEach((line, index) => {
        if (index) p.append(document.createElement("br"));
        p.append(inline(line));
      });
      root.append(p);
      paragraph = [];
    }
    list = null;
  };
  for (let index = 0; index < lines.length; index++) {
    const line = lines[index];
    const fence = line.match(/^```\s*([\w+-]*)/);
    if (fence) {
      flush();
      const code = [];
      index++;
      while (index < lines.length && !lines[index].startsWith("```")) code.push(lines[index++]);
      const pre = document.createElement("pre");
      const element = document.createElement("code");
      if (fence[1]) element.dataset.language = fence[1];
      element.textContent = code.join("\n");
      pre.append(element);
      root.append(pre);
      continue;
    }
    const heading = line.match(/^(#{1,4})\s+(.*)$/);
    const bullet = line.match(/^\s*[-*+]\s+(.*)$/);
    const numbered = line.match(/^\s*\d+[.)]\s+(.*)$/);
    if (heading) {
      flush();
      const element = document.createElement(`h${Math.min(6, heading[1].length + 2)}`);
      element.append(inline(heading[2]));
      root.append(element);
    } else if (bullet || numbered) {
      if (paragraph.length) flush();
      const kind = bullet ? "ul" : "ol";
      if (!list || list.tagName.toLowerCase() !== kind) {
        list = document.createElement(kind);
        root.append(list);
      }
      const item = document.createElement("li");
      item.append(inline((bullet || numbered)[1]));
      list.append(item);
    } else if (!line.trim()) {
      flush();
    } else {
      list = null;
      paragraph.push(line);
    }
  }
  flush();
  return root;
}
