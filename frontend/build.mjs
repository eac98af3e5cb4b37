// Bundle the console's editor into one file under connectors/static/connectors/vendor/.
// Run through scripts/build-editor.sh; the output is committed, so nothing builds at install time.
import { build } from "esbuild";
import fs from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const vendor = path.join(here, "..", "connectors", "static", "connectors", "vendor");
const out = path.join(vendor, "editor.bundle.js");

// codemirror-json-schema renders descriptions with markdown-it + shiki, and carries YAML and JSON5
// parsers: swap in a tiny renderer and the JSON parser alone (see src/markdown.js, src/parsers.js).
const STAND_INS = [
  [/utils\/markdown(\.js)?$/, "markdown.js"],
  [/^\.\.?\/parsers(\/index)?(\.js)?$/, "parsers.js"],
];
const smallMarkdown = {
  name: "stand-ins",
  setup(b) {
    for (const [filter, file] of STAND_INS) {
      b.onResolve({ filter }, (args) =>
        args.importer.includes("codemirror-json-schema")
          ? { path: path.join(here, "src", file) }
          : undefined,
      );
    }
  },
};

const result = await build({
  entryPoints: [path.join(here, "src", "editor.js")],
  bundle: true,
  format: "iife",
  globalName: "ConsoleEditor",
  minify: true,
  legalComments: "eof",
  target: ["es2020"],
  outfile: out,
  plugins: [smallMarkdown],
  metafile: true,
  logLevel: "info",
});

// Write down what went into the bundle: each package's version and licence, and the licence texts.
const packages = new Map();
for (const output of Object.values(result.metafile.outputs)) {
  for (const input of Object.keys(output.inputs)) {
    const match = input.match(/node_modules\/((?:@[^/]+\/)?[^/]+)/);
    if (match) packages.set(match[1], path.join(here, "node_modules", match[1]));
  }
}
const versions = [
  "The console's code editor: connectors/static/connectors/vendor/editor.bundle.js",
  "Built by scripts/build-editor.sh from frontend/ (package.json, package-lock.json, src/).",
  "",
  "package\tversion\tlicence",
];
const licences = [];
for (const name of [...packages.keys()].sort()) {
  const dir = packages.get(name);
  const meta = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
  versions.push(`${name}\t${meta.version}\t${meta.license || "see LICENSES.txt"}`);
  const file = fs.readdirSync(dir).find((f) => /^(licen[sc]e|copying)(\.|$)/i.test(f));
  const text = file ? fs.readFileSync(path.join(dir, file), "utf8").trim() : `License: ${meta.license}`;
  licences.push(`${"=".repeat(78)}\n${name} ${meta.version}\n${"=".repeat(78)}\n${text}\n`);
}
fs.writeFileSync(path.join(vendor, "VERSIONS.txt"), versions.join("\n") + "\n");
fs.writeFileSync(path.join(vendor, "LICENSES.txt"), licences.join("\n"));
