// ANSI colours in log text: SGR sequences (ESC [ ... m) become spans with
// classes; everything else stays text nodes, so nothing a model server
// prints is ever interpreted as HTML.

const SGR = /\x1b\[([0-9;]*)m/g;
const OTHER = /\x1b\[[0-9;?]*[A-Za-z]/g; // cursor moves and the like: dropped

export function stripAnsi(text) {
  return text.replace(SGR, "").replace(OTHER, "");
}

function classes(state) {
  const names = [];
  if (state.bold) names.push("ansi-bold");
  if (state.dim) names.push("ansi-dim");
  if (state.italic) names.push("ansi-italic");
  if (state.underline) names.push("ansi-underline");
  if (state.fg !== null) names.push(`ansi-fg-${state.fg}`);
  if (state.bg !== null) names.push(`ansi-bg-${state.bg}`);
  return names.join(" ");
}

function apply(state, codes) {
  const numbers = codes === "" ? [0] : codes.split(";").map((code) => Number(code) || 0);
  for (let index = 0; index < numbers.length; index++) {
    const code = numbers[index];
    if (code === 0) Object.assign(state, { bold: false, dim: false, italic: false, underline: false, fg: null, bg: null });
    else if (code === 1) state.bold = true;
    else if (code === 2) state.dim = true;
    else if (code === 3) state.italic = true;
    else if (code === 4) state.underline = true;
    else if (code === 22) state.bold = state.dim = false;
    else if (code === 23) state.italic = false;
    else if (code === 24) state.underline = false;
    else if (code >= 30 && code <= 37) state.fg = code - 30;
    else if (code >= 90 && code <= 97) state.fg = code - 90 + 8;
    else if (code === 39) state.fg = null;
    else if (code >= 40 && code <= 47) state.bg = code - 40;
    else if (code >= 100 && code <= 107) state.bg = code - 100 + 8;
    else if (code === 49) state.bg = null;
    else if ((code === 38 || code === 48) && numbers[index + 1] === 5) index += 2; // 256 colours: not shown
    else if ((code === 38 || code === 48) && numbers[index + 1] === 2) index += 4; // true colour: not shown
  }
}

export function renderAnsi(text) {
  const fragment = document.createDocumentFragment();
  const state = { bold: false, dim: false, italic: false, underline: false, fg: null, bg: null };
  let last = 0;
  const emit = (piece) => {
    if (!piece) return;
    piece = piece.replace(OTHER, "");
    const name = classes(state);
    if (!name) {
      fragment.append(document.createTextNode(piece));
    } else {
      const span = document.createElement("span");
      span.className = name;
      span.textContent = piece;
      fragment.append(span);
    }
  };
  for (const match of text.matchAll(SGR)) {
    emit(text.slice(last, match.index));
    apply(state, match[1]);
    last = match.index + match[0].length;
  }
  emit(text.slice(last));
  return fragment;
}
