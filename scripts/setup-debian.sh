#!/usr/bin/env bash
# Debian packages the project needs outside Python: fluidsynth + the General MIDI soundfont (rendering MIDI
# for the audio tokenizer) and chromium (headless browser for the app's UI tests).
# Idempotent: packages already installed are skipped; uses sudo only when not root.
set -euo pipefail

packages=(fluidsynth fluid-soundfont-gm chromium)

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "setup-debian: all packages already installed (${packages[*]})"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
else
    echo "setup-debian: need root or sudo to install: ${missing[*]}" >&2
    exit 1
fi

echo "setup-debian: installing ${missing[*]}"
"${sudo[@]}" apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
