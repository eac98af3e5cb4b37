// Stands in for codemirror-json-schema's parsers/index.js, which would bundle YAML and JSON5
// parsers (about 140 kB) that the console never uses: its configs are JSON.
import { parseJSONDocumentState } from "../node_modules/codemirror-json-schema/dist/parsers/json-parser.js";

export const getDefaultParser = () => parseJSONDocumentState;
