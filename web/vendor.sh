#!/usr/bin/env bash
# Refreshes web/static/vendor/ from the versions pinned in package-lock.json: the ES module
# builds of Preact, its hooks and htm, served as they are (no bundler). Run after changing
# package.json; commit the copied files with the lockfile.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp package.json package-lock.json "$tmp/"
(cd "$tmp" && npm ci --ignore-scripts --no-audit --no-fund >/dev/null)
cp "$tmp/node_modules/preact/dist/preact.module.js" static/vendor/preact.module.js
cp "$tmp/node_modules/preact/hooks/dist/hooks.module.js" static/vendor/hooks.module.js
cp "$tmp/node_modules/htm/dist/htm.module.js" static/vendor/htm.module.js
cp "$tmp/node_modules/preact/LICENSE" static/vendor/LICENSE-preact
cp "$tmp/node_modules/htm/LICENSE" static/vendor/LICENSE-htm
echo "vendored: preact $(node -p "require('$tmp/node_modules/preact/package.json').version"), htm $(node -p "require('$tmp/node_modules/htm/package.json').version")"
