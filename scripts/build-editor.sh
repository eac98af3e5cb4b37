#!/usr/bin/env bash
# Rebuild the console's vendored code editor (CodeMirror 6 + JSON Schema support) from frontend/:
# connectors/static/connectors/vendor/editor.bundle.js, VERSIONS.txt and LICENSES.txt. The output is
# committed, so only someone upgrading the editor runs this (it needs Node.js 18+ and npm).
set -euo pipefail
cd "$(dirname "$0")/../frontend"
npm ci --no-audit --no-fund
node build.mjs
