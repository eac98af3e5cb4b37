// The console's code editors: a JSON editor checked against a JSON Schema as you type, and an
// HTML / plain-text editor for templates. Bundled into window.ConsoleEditor by build.mjs; the
// page scripts under connectors/static/connectors/console/ use only what is exported here.

import {
  autocompletion,
  closeBrackets,
  closeBracketsKeymap,
  completionKeymap,
} from "@codemirror/autocomplete";
import { defaultKeymap, history, historyKeymap } from "@codemirror/commands";
import { html } from "@codemirror/lang-html";
import { json, jsonLanguage, jsonParseLinter } from "@codemirror/lang-json";
import {
  bracketMatching,
  defaultHighlightStyle,
  foldGutter,
  foldKeymap,
  indentOnInput,
  syntaxHighlighting,
} from "@codemirror/language";
import { lintGutter, lintKeymap, linter } from "@codemirror/lint";
import { highlightSelectionMatches, searchKeymap } from "@codemirror/search";
import { Compartment, EditorState, StateEffect, StateField } from "@codemirror/state";
import {
  EditorView,
  crosshairCursor,
  drawSelection,
  dropCursor,
  highlightActiveLine,
  highlightActiveLineGutter,
  highlightSpecialChars,
  hoverTooltip,
  keymap,
  lineNumbers,
  rectangularSelection,
} from "@codemirror/view";
import { disableErrorLogging } from "best-effort-json-parser";
import {
  handleRefresh,
  jsonCompletion,
  jsonSchemaHover,
  jsonSchemaLinter,
  stateExtensions,
  updateSchema,
} from "codemirror-json-schema";

// The completion's tolerant parser reports every half-typed document on the console; a document
// being typed is half-typed most of the time, and the linter already says what is wrong with it.
disableErrorLogging();

function baseExtensions(label) {
  return [
    lineNumbers(),
    highlightActiveLineGutter(),
    highlightSpecialChars(),
    history(),
    foldGutter(),
    drawSelection(),
    dropCursor(),
    EditorState.allowMultipleSelections.of(true),
    indentOnInput(),
    syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
    bracketMatching(),
    closeBrackets(),
    autocompletion(),
    rectangularSelection(),
    crosshairCursor(),
    highlightActiveLine(),
    highlightSelectionMatches(),
    // Tab is left alone on purpose: it moves focus on, so keyboard users are never trapped.
    keymap.of([
      ...closeBracketsKeymap,
      ...defaultKeymap,
      ...searchKeymap,
      ...historyKeymap,
      ...foldKeymap,
      ...completionKeymap,
      ...lintKeymap,
    ]),
    EditorView.contentAttributes.of({ "aria-label": label, "aria-multiline": "true" }),
  ];
}

// Keep a hidden <textarea> in step with the editor, so that a plain form submit sends the text.
function syncTo(textarea, onChange) {
  return EditorView.updateListener.of((update) => {
    if (update.docChanged) {
      textarea.value = update.state.doc.toString();
      if (onChange) onChange(textarea.value);
    }
  });
}

// CodeMirror writes its styles into <style> elements; the page's CSP admits them by this nonce.
function cspNonce() {
  const meta = document.querySelector('meta[name="csp-nonce"]');
  return meta ? meta.content : "";
}

function mount(textarea, extensions) {
  const view = new EditorView({
    state: EditorState.create({
      doc: textarea.value,
      extensions: [EditorView.cspNonce.of(cspNonce()), ...extensions],
    }),
  });
  textarea.hidden = true;
  textarea.insertAdjacentElement("afterend", view.dom);
  const label = textarea.id && document.querySelector(`label[for="${textarea.id}"]`);
  if (label) {
    // The <label> points at the hidden textarea; clicking it should reach the editor instead.
    label.addEventListener("click", (event) => {
      event.preventDefault();
      view.focus();
    });
  }
  return view;
}

function setText(view, text) {
  view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } });
}

// Errors the server reported for the last submitted text ------------------------------------

const setServerErrorsEffect = StateEffect.define();

// The server's errors stay where they were put, moving with the text, until their line is edited:
// then the live check (or the next submit) has the last word on that line.
const serverErrors = StateField.define({
  create: () => [],
  update(errors, tr) {
    for (const effect of tr.effects) {
      if (effect.is(setServerErrorsEffect)) return effect.value;
    }
    if (!tr.docChanged || !errors.length) return errors;
    const kept = [];
    for (const error of errors) {
      const line = tr.startState.doc.lineAt(Math.min(error.from, tr.startState.doc.length));
      let touched = false;
      tr.changes.iterChangedRanges((fromA, toA) => {
        if (fromA <= line.to && toA >= line.from) touched = true;
      });
      if (!touched) {
        kept.push({
          ...error,
          from: tr.changes.mapPos(error.from),
          to: tr.changes.mapPos(error.to, 1),
        });
      }
    }
    return kept;
  },
});

function positionOf(doc, line, column) {
  const number = Math.min(Math.max(1, line || 1), doc.lines);
  const docLine = doc.line(number);
  return Math.min(docLine.from + Math.max(0, (column || 1) - 1), docLine.to);
}

function serverDiagnostics(state) {
  return state.field(serverErrors).map((error) => ({
    from: error.from,
    to: error.to,
    severity: "error",
    source: "server",
    message: error.message,
  }));
}

function describe(doc, diagnostics) {
  return diagnostics
    .map((d) => {
      const line = doc.lineAt(Math.min(d.from, doc.length));
      return {
        line: line.number,
        column: Math.min(d.from, doc.length) - line.from + 1,
        message: d.message,
        source: d.source || "schema",
        from: d.from,
      };
    })
    .sort((a, b) => a.from - b.from);
}

/**
 * Turn a <textarea> into a JSON editor validated against `schema` as you type.
 *
 * onDiagnostics(list) is called after each check with [{line, column, message, source}].
 */
export function jsonEditor({ textarea, schema, label, onChange, onDiagnostics }) {
  const parseLinter = jsonParseLinter();
  const schemaLinter = jsonSchemaLinter();
  const check = (view) => {
    let found = parseLinter(view);
    if (!found.length) found = schemaLinter(view);
    found = [...found, ...serverDiagnostics(view.state)];
    if (onDiagnostics) onDiagnostics(describe(view.state.doc, found));
    return found;
  };
  const view = mount(textarea, [
    ...baseExtensions(label || "JSON config"),
    json(),
    serverErrors,
    stateExtensions(schema),
    lintGutter(),
    linter(check, {
      delay: 300,
      needsRefresh: (update) =>
        update.startState.field(serverErrors) !== update.state.field(serverErrors) ||
        handleRefresh(update),
    }),
    jsonLanguage.data.of({ autocomplete: jsonCompletion() }),
    hoverTooltip(jsonSchemaHover()),
    keymap.of([{ key: "Mod-Shift-f", run: (v) => format(v).ok }]),
    syncTo(textarea, onChange),
  ]);
  return {
    view,
    getText: () => view.state.doc.toString(),
    setText: (text) => setText(view, text),
    setSchema: (next) => updateSchema(view, next),
    format: () => format(view),
    focusAt: (line, column) => {
      const pos = positionOf(view.state.doc, line, column);
      view.dispatch({ selection: { anchor: pos }, scrollIntoView: true });
      view.focus();
    },
    /** Mark errors as the server reported them: [{path, line, column, message}]. */
    setServerErrors: (errors) => {
      const doc = view.state.doc;
      const marks = (errors || []).map((error) => {
        const from = positionOf(doc, error.line, error.column);
        const lineEnd = doc.lineAt(from).to;
        const prefix = error.path ? `${error.path}: ` : "";
        return { from, to: Math.max(from + 1, lineEnd) > doc.length ? doc.length : Math.max(from + 1, lineEnd), message: prefix + error.message };
      });
      view.dispatch({ effects: setServerErrorsEffect.of(marks) });
    },
  };
}

/** Re-indent the document as JSON with two spaces; leave it alone when it does not parse. */
export function format(view) {
  const text = view.state.doc.toString();
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    return { ok: false, message: `Not formatted: the text is not valid JSON yet (${error.message}).` };
  }
  const formatted = JSON.stringify(parsed, null, 2) + "\n";
  if (formatted !== text) setText(view, formatted);
  return { ok: true, message: "Formatted." };
}

/** Turn a <textarea> into a code editor for template content: HTML or plain text. */
export function codeEditor({ textarea, language, label, onChange }) {
  const languageSlot = new Compartment();
  const wrapping = new Compartment();
  const languageFor = (name) => (name === "html" ? html() : []);
  const view = mount(textarea, [
    ...baseExtensions(label || "Template content"),
    languageSlot.of(languageFor(language)),
    wrapping.of(EditorView.lineWrapping),
    syncTo(textarea, onChange),
  ]);
  return {
    view,
    getText: () => view.state.doc.toString(),
    setText: (text) => setText(view, text),
    setLanguage: (name) => view.dispatch({ effects: languageSlot.reconfigure(languageFor(name)) }),
  };
}

/** A small JSON editor without a schema (the Send test payload). */
export function plainJsonEditor({ textarea, label, onChange }) {
  const view = mount(textarea, [
    ...baseExtensions(label || "JSON"),
    json(),
    lintGutter(),
    linter(jsonParseLinter(), { delay: 300 }),
    syncTo(textarea, onChange),
  ]);
  return { view, getText: () => view.state.doc.toString(), setText: (t) => setText(view, t) };
}
