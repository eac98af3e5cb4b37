// Stands in for codemirror-json-schema's utils/markdown.js, which pulls in markdown-it and shiki
// (megabytes, and a highlighter that is never used for the short texts of a schema). The schema's
// descriptions use only `code` spans, so escaping the text and marking those spans is enough.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

export function renderMarkdown(markdown) {
  return escapeHtml(markdown ?? "").replace(/`([^`]+)`/g, "<code>$1</code>");
}
