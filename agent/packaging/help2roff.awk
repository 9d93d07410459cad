# Turns one clap `-h` text into a man page subsection (.SS), for build-deb.sh.
# -v title="dct key generate" -v skip=" --socket --json " (options documented higher up)
# -v mode=opts prints only the option keys (the first long flag of each), one a line.
function esc(s) {
  gsub(/\\/, "\\e", s)
  return s
}
function line(s) {
  s = esc(s)
  if (s ~ /^[.']/) s = "\\&" s
  return s
}
function dashes(s) {
  s = esc(s)
  gsub(/-/, "\\-", s)
  return s
}
function key(term,   n, parts, i) {
  n = split(term, parts, /[ ,]+/)
  for (i = 1; i <= n; i++) if (parts[i] ~ /^--/) return parts[i]
  return parts[1]
}
BEGIN { section = "about"; about = "" }
/^Usage: / { usage = substr($0, 8); section = "usage"; next }
/^[A-Z][A-Za-z ]*:$/ { section = $0; next }
section == "about" {
  if ($0 == "") { if (about != "") pp = 1; next }
  if (pp) { about = about ".PP\n"; pp = 0 }
  about = about line($0) "\n"
  next
}
(section == "Options:" || section == "Arguments:") && /^ +[^ ]/ {
  entry = $0
  sub(/^ +/, "", entry)
  term = entry; desc = ""
  if (match(entry, /  +/)) { term = substr(entry, 1, RSTART - 1); desc = substr(entry, RSTART + RLENGTH) }
  if (section == "Options:") {
    k = key(term)
    if (mode == "opts") { print k; next }
    if (index(skip, " " k " ") > 0) next
  }
  if (mode == "opts") next
  items = items ".TP\n.B " dashes(term) "\n" (desc == "" ? "" : line(desc) "\n")
}
END {
  if (mode == "opts") exit
  printf ".SS \"%s\"\n", title
  printf "%s", about
  printf ".PP\n.B Usage:\n%s\n", dashes(usage)
  printf "%s", items
}
