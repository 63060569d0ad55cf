#!/usr/bin/env bash
# Write a live-style fMP4 test stream into a mediarelay storage directory with ffmpeg.
#
#   scripts/make-test-media.sh [--live] DIR [STREAM] [SECONDS]
#
#   DIR      the relay's storage directory (`serve --storage DIR`)
#   STREAM   the stream name, default live/demo: writes DIR/STREAM/init.mp4 and
#            DIR/STREAM/seg-0000000001.m4s, seg-0000000002.m4s, ... (about 1 s each)
#   SECONDS  how much video: default 10 (without --live); with --live, none = until killed
#   --live   encode in real time (ffmpeg -re), one segment about every second, like a camera;
#            without it the segments are written as fast as ffmpeg can encode them
#
# Video: ffmpeg's moving `testsrc2` pattern with the local wall-clock time, the frame number and
# the media time burnt in (drawtext; falls back to plain testsrc2 when no font is found), 640x360,
# 25 fps, H.264 (libx264 ultrafast, Main profile, about 500 kbit/s), a key frame every second so
# that every segment starts with one. Debian's Chromium plays H.264 (avc1) through Media Source
# Extensions (tests/browser/player.test.mjs checks it); CODEC=vp9 or CODEC=av1 makes VP9
# (libvpx-vp9) or AV1 (libsvtav1) in fMP4 instead.
#
# Atomic: ffmpeg writes into a staging directory next to the stream (DIR/.make-test-media.PID,
# same filesystem, ignored by the relay's discovery: not under STREAM/); its HLS muxer finishes
# every segment as seg-N.m4s.tmp and renames it (-hls_flags temp_file). This script then renames
# init.mp4 into place first (once ffmpeg has closed it) and every finished segment after it, in
# sequence order, so the relay never sees a partly written object and never a segment before the
# init segment. An existing init.mp4 is replaced, and segments continue after the highest
# sequence number already there (an "encoder restart").
set -euo pipefail

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

live=0
args=()
for a in "$@"; do
  case "$a" in
    --live) live=1 ;;
    -h | --help) usage ;;
    -*) echo "make-test-media.sh: unknown option $a" >&2; usage ;;
    *) args+=("$a") ;;
  esac
done
[ ${#args[@]} -ge 1 ] && [ ${#args[@]} -le 3 ] || usage
dir=${args[0]}
stream=${args[1]:-live/demo}
seconds=${args[2]:-}
if [ -z "$seconds" ] && [ "$live" = 0 ]; then seconds=10; fi
if [ -n "$seconds" ] && ! [[ "$seconds" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
  echo "make-test-media.sh: SECONDS must be a number, got '$seconds'" >&2
  exit 2
fi
case "$stream" in
  /* | */ | *//* | *..* | '') echo "make-test-media.sh: bad stream name '$stream'" >&2; exit 2 ;;
esac
command -v ffmpeg >/dev/null 2>&1 || { echo "make-test-media.sh: ffmpeg not found" >&2; exit 1; }

out="$dir/$stream"
mkdir -p "$out"
stage="$dir/.make-test-media.$$"
rm -rf "$stage"
mkdir -p "$stage"

# Continue after the highest sequence number already in the stream.
start=1
last=$(find "$out" -maxdepth 1 -name 'seg-[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9].*' -printf '%f\n' 2>/dev/null \
  | sed -n 's/^seg-\([0-9]\{10\}\)\..*/\1/p' | sort | tail -1)
if [ -n "$last" ]; then start=$((10#$last + 1)); fi

fps=25
font=""
for f in /usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf \
  /usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf \
  /usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf; do
  if [ -f "$f" ]; then font=$f; break; fi
done
if [ -z "$font" ] && command -v fc-match >/dev/null 2>&1; then
  font=$(fc-match -f '%{file}' monospace 2>/dev/null || true)
fi
vf="testsrc2=size=640x360:rate=$fps"
filters=$(ffmpeg -hide_banner -filters 2>/dev/null || true)
if [ -n "$font" ] && [ -f "$font" ] && [[ "$filters" == *" drawtext "* ]]; then
  dt="drawtext=fontfile=$font:fontcolor=white:box=1:boxcolor=black@0.6:boxborderw=6"
  vf="$vf,$dt:fontsize=40:x=20:y=h-124:text='%{localtime\\:%X}'"
  vf="$vf,$dt:fontsize=22:x=20:y=h-60:text='frame %{n}  t=%{pts\\:hms}'"
else
  echo "make-test-media.sh: no drawtext/font: plain testsrc2 (no burnt-in clock)" >&2
fi

case "${CODEC:-h264}" in
  h264 | avc)
    enc=(-c:v libx264 -preset ultrafast -tune zerolatency -profile:v main -pix_fmt yuv420p
      -b:v 500k -maxrate 600k -bufsize 500k -x264-params "keyint=$fps:min-keyint=$fps:scenecut=0") ;;
  vp9)
    enc=(-c:v libvpx-vp9 -deadline realtime -cpu-used 8 -row-mt 1 -pix_fmt yuv420p
      -b:v 500k -g "$fps" -keyint_min "$fps") ;;
  av1)
    enc=(-c:v libsvtav1 -preset 12 -pix_fmt yuv420p -b:v 500k -g "$fps") ;;
  *) echo "make-test-media.sh: CODEC must be h264, vp9 or av1" >&2; exit 2 ;;
esac

input=(-f lavfi -i "$vf")
[ "$live" = 1 ] && input=(-re "${input[@]}")
duration=()
[ -n "$seconds" ] && duration=(-t "$seconds")

published_init=0
# Move what ffmpeg has finished into the stream directory (rename: atomic, same filesystem).
publish() {
  if [ "$published_init" = 0 ]; then
    # init.mp4 is closed before the first segment file is opened
    if [ -f "$stage/init.mp4" ] && compgen -G "$stage/seg-*" >/dev/null; then
      mv -f "$stage/init.mp4" "$out/init.mp4"
      published_init=1
    else
      return 0
    fi
  fi
  local f
  # finished segments only (ffmpeg writes seg-N.m4s.tmp and renames it); names sort in order
  for f in $(cd "$stage" && compgen -G 'seg-[0-9]*.m4s' | sort); do
    mv -f "$stage/$f" "$out/$f"
  done
}

ffpid=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$ffpid" ] && kill -0 "$ffpid" 2>/dev/null; then
    kill -TERM "$ffpid" 2>/dev/null || true
    wait "$ffpid" 2>/dev/null || true
  fi
  publish 2>/dev/null || true
  rm -rf "$stage"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

ffmpeg -hide_banner -nostdin -loglevel "${FFMPEG_LOGLEVEL:-error}" "${input[@]}" "${duration[@]}" \
  -an "${enc[@]}" \
  -f hls -hls_time 1 -hls_list_size 0 -hls_segment_type fmp4 -hls_fmp4_init_filename init.mp4 \
  -hls_segment_filename "$stage/seg-%010d.m4s" -start_number "$start" \
  -hls_flags temp_file+independent_segments \
  "$stage/index.m3u8" &
ffpid=$!

while kill -0 "$ffpid" 2>/dev/null; do
  publish
  sleep 0.1
done
status=0
wait "$ffpid" || status=$?
ffpid=""
publish
if [ "$status" != 0 ] && [ "$status" != 255 ]; then
  echo "make-test-media.sh: ffmpeg failed ($status)" >&2
  exit "$status"
fi
n=$(find "$out" -maxdepth 1 -name 'seg-*.m4s' | wc -l)
echo "make-test-media.sh: $out: init.mp4 and $n segments" >&2
