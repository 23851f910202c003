#!/usr/bin/env bash
# Remakes docs/report.png, the picture of the HTML attendance report shown in README.md and
# docs/analysts.md:
#
#   1. `roster-sync demo` records a short run of the simulator into a SQLite file of its own
#      (--database-url sqlite://…, in a temporary directory; nothing is written here);
#   2. `roster-sync report <MEETING_ID> --format html` writes the page of the demo's first
#      meeting (the all-hands);
#   3. headless Chromium (Debian: `apt-get install -y chromium`) takes a screenshot of the page.
#
# Usage: docs/screenshot.sh            (from anywhere; about a minute)
# Environment: ROSTER_SYNC (a built roster-sync binary; default: `cargo build` and
# target/debug/roster-sync), CHROMIUM (default: chromium), DEMO_SECONDS (default 40),
# WIDTH and HEIGHT of the picture (default 1200 × 1000).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${ROSTER_SYNC:-}" ]; then
  cargo build --quiet --bin roster-sync
  ROSTER_SYNC="$PWD/target/debug/roster-sync"
fi
CHROMIUM="${CHROMIUM:-chromium}"
command -v "$CHROMIUM" >/dev/null || { echo "no $CHROMIUM: apt-get install -y chromium" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export DATABASE_URL="sqlite://$work/demo.db"

# A small demo: three meetings of 10 attendees, so the picture's rows stay readable.
"$ROSTER_SYNC" demo --meetings 3 --attendees 10 --duration "${DEMO_SECONDS:-40}s" --interval 2s \
  >"$work/demo.log" 2>"$work/demo.err" || { cat "$work/demo.err" >&2; exit 1; }

meeting="$("$ROSTER_SYNC" meetings list --format json |
  python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["meeting_id"])')"
"$ROSTER_SYNC" report "$meeting" --format html >"$work/report.html"

"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
  --user-data-dir="$work/chromium" --window-size="${WIDTH:-1200},${HEIGHT:-1000}" \
  --screenshot="$PWD/docs/report.png" "file://$work/report.html" 2>"$work/chromium.log" ||
  { cat "$work/chromium.log" >&2; exit 1; }
echo "docs/report.png: meeting $meeting" >&2
