#!/bin/bash
# cmake/man_page.sh BLKMIRROR VERSION INCLUDE OUT: writes blkmirror(1) to OUT (and OUT.gz, as
# Debian ships man pages) from the help of the built binary BLKMIRROR, through Debian's help2man:
# NAME, SYNOPSIS, DESCRIPTION and OPTIONS are help2man's reading of `blkmirror --help`; COMMANDS
# has one subsection per subcommand listed there, help2man's reading of `blkmirror SUB --help`;
# INCLUDE (a help2man include file) adds what no help says. Nothing here names a flag: a flag
# added to the CLI is in the page at the next build. Run by the build (CMakeLists.txt) whenever
# the binary changes.
set -euo pipefail
bin=$1 version=$2 include=$3 out=$4
command -v help2man > /dev/null || { echo "man_page.sh: help2man is missing (apt-get install help2man)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# help2man runs this wrapper with --help: `blkmirror [SUB] --help` as the user types it (argv[0]
# "blkmirror", not the build path), with CLI11's "-h,--help" spaced so that both spellings are
# read as options.
cat > "$tmp/blkmirror" <<EOF
#!/bin/bash
set -o pipefail
(exec -a blkmirror "$bin" \${BLKMIRROR_SUBCOMMAND:-} "\$@") | sed 's/^\(  *-[A-Za-z]\),--/\1, --/'
EOF
chmod +x "$tmp/blkmirror"
h2m() { help2man --no-info --version-string="$version" "$@"; }

# The subcommands: the first word of each line under "Subcommands:" in the top-level help.
mapfile -t commands < <("$tmp/blkmirror" --help | awk '/^Subcommands:/ {on = 1; next}
                                                      on && /^  [a-z]/ {print $1} on && /^$/ {exit}')
[ "${#commands[@]}" -gt 0 ] || { echo "man_page.sh: no subcommands in '$bin --help'" >&2; exit 1; }

# Each subcommand's page, from its synopsis on, becomes a subsection: its usage line, what it
# does, then its positionals and options as tagged paragraphs.
{
  echo "[COMMANDS]"
  for c in "${commands[@]}"; do
    BLKMIRROR_SUBCOMMAND=$c h2m "$tmp/blkmirror" > "$tmp/$c.1"
    echo ".SS \"$c\""
    sed -n '/^\.SH SYNOPSIS/,$p' "$tmp/$c.1" | sed -e '/^\.SH SYNOPSIS/d' \
      -e 's/^\.SH DESCRIPTION$/.PP/' -e 's/^\.SH OPTIONS$/.PP\nOptions:/' \
      -e 's/^\.SS "\(.*\)"$/.PP\n\1/' -e 's/^\([[/]\)/\\\&\1/'
  done
  cat "$include"
} > "$tmp/include.h2m"

h2m --name="mirror a volume to replicas, block by block, CRC32C-checked" \
  --include="$tmp/include.h2m" "$tmp/blkmirror" > "$tmp/blkmirror.1"
grep -q '^\.SH COMMANDS' "$tmp/blkmirror.1" || { echo "man_page.sh: help2man left out COMMANDS" >&2; exit 1; }
mv "$tmp/blkmirror.1" "$out"
gzip -9 -n -c "$out" > "$out.gz"
