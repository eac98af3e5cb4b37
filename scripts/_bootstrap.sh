# Sourced by scripts/dev and scripts/test: find Python >= 3.12, make .venv, install, stay quiet when
# nothing changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

is_recent() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.14 \
        "$HOME"/.pyenv/versions/3.13*/bin/python "$HOME"/.pyenv/versions/3.12*/bin/python \
        /usr/local/bin/python3.13 /usr/local/bin/python3.12 /usr/bin/python3.13 /usr/bin/python3.12 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 && is_recent "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if [ ! -x .venv/bin/python ] || ! is_recent .venv/bin/python; then
    if ! PY="$(find_python)"; then
        echo "Connector Console needs Python 3.12 or newer (Django 6.1 does), and none was found." >&2
        echo "Install one (e.g. 'pyenv install 3.13' or your system's python3.13 package)," >&2
        echo "or point PYTHON at it: PYTHON=/path/to/python3.13 $0" >&2
        exit 1
    fi
    echo "Creating .venv with $("$PY" --version) ($PY)"
    rm -rf .venv
    "$PY" -m venv .venv
fi

STAMP=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$STAMP" ]; then
    echo "Installing dependencies into .venv"
    # The project runs from this folder; only its dependencies (all extras) are installed.
    .venv/bin/python -c 'import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project.get("optional-dependencies", {})
print("\n".join(project["dependencies"] + [d for group in extras.values() for d in group]))' \
        > .venv/requirements.txt
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip \
        2> >(grep -v "^WARNING: Location" >&2)
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r .venv/requirements.txt \
        2> >(grep -v "^WARNING: Location" >&2)
    rm -f .venv/.installed-*
    touch "$STAMP"
fi
