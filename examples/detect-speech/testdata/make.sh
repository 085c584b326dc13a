#!/bin/sh
# Regenerates speech.wav: 1.0 s of silence, a sentence spoken by espeak-ng, 1.0 s of silence,
# as 16 kHz mono signed 16-bit PCM WAV. Needs espeak-ng and sox (apt-get install espeak-ng sox).
# espeak-ng and sox versions change the exact samples; the segment stays roughly 1.0 s to 1.0 s + speech.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
espeak-ng -v en-us -s 160 -w "$tmp/voice.wav" "Tensorlet runs neural networks next to WebAssembly functions."
# To 16 kHz mono 16-bit, trim espeak's own leading/trailing quiet, then pad exactly 1.0 s each side.
sox "$tmp/voice.wav" -r 16000 -c 1 -b 16 -e signed-integer "$tmp/speech16k.wav" \
    silence 1 0.01 0.1% reverse silence 1 0.01 0.1% reverse
sox "$tmp/speech16k.wav" speech.wav pad 1.0 1.0
soxi speech.wav
echo "speech: $(soxi -D "$tmp/speech16k.wav") s"
