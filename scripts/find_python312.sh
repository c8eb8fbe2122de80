#!/usr/bin/env bash
# Print the path of a Python 3.12 interpreter (the version the Dify plugin daemon runs plugins with), or fail
# with instructions. Looks at $PYTHON312, python3.12 on PATH, pyenv's versions and the usual system paths.
set -u
check() { [ -n "$1" ] && [ -x "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; }
candidates=("${PYTHON312:-}" "$(command -v python3.12 2>/dev/null || true)")
if command -v pyenv >/dev/null 2>&1; then
  for p in "$(pyenv root)"/versions/3.12*/bin/python3.12; do candidates+=("$p"); done
fi
for p in "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do candidates+=("$p"); done
for p in "${candidates[@]}"; do
  if check "$p"; then echo "$p"; exit 0; fi
done
cat >&2 <<'MSG'
error: Python 3.12 was not found (the Dify plugin daemon runs plugins on 3.12; dify_plugin 0.10 needs it).
Install it, then run `make setup` again, e.g.:
  pyenv install 3.12          # then it is found under $(pyenv root)/versions
  apt-get install python3.12  # Debian/Ubuntu with 3.12 packages
or point PYTHON312 at an interpreter: make setup PYTHON312=/path/to/python3.12
MSG
exit 1
