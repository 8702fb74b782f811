# Reads a NoCloud #cloud-config user-data (the subset Solstice writes) and
#   prints one line "USER KEY" per entry of ssh_authorized_keys (users[].ssh_authorized_keys, and a top-level
#   ssh_authorized_keys for the default user root; an entry without a name also means root);
#   writes the ssh_keys.ed25519_private block scalar, dedented, to the file named by -v hostkey=FILE.
# Not a YAML parser: block style as Solstice and cloud-init examples write it; flow lists [a, b] on one line.
function indent(s) { match(s, /^ */); return RLENGTH }
function unq(s) {
  sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s)
  if (s ~ /^".*"$/ || s ~ /^'.*'$/) s = substr(s, 2, length(s) - 2)
  return s
}
function addkey(k) { k = unq(k); if (k != "") { nkeys++; keyitem[nkeys] = item; keyval[nkeys] = k } }
function flowkeys(rest,   n, i, parts) {
  rest = unq(rest)
  if (rest !~ /^\[.*\]$/) return 0
  n = split(substr(rest, 2, length(rest) - 2), parts, ",")
  for (i = 1; i <= n; i++) addkey(parts[i])
  return 1
}
BEGIN { item = 0; itemuser[0] = "root"; nitems = 0; inblock = 0; havekey = 0; sect = ""; keymode = 0 }
{
  sub(/\r$/, "")
  ind = indent($0)
  if (inblock) {
    if ($0 ~ /^[ \t]*$/) { buf = buf "\n"; next }
    if (ind > blockind) {
      if (bfirst < 0) bfirst = ind
      buf = buf substr($0, bfirst + 1) "\n"
      next
    }
    inblock = 0
  }
  if ($0 ~ /^[ \t]*(#.*)?$/) next
  body = substr($0, ind + 1)
  if (ind == 0) {
    keymode = 0; sect = ""
    if (body ~ /^users:/) sect = "users"
    else if (body ~ /^ssh_keys:/) sect = "ssh_keys"
    else if (body ~ /^ssh_authorized_keys:/) {
      item = 0; rest = body; sub(/^ssh_authorized_keys:/, "", rest)
      if (!flowkeys(rest)) { keymode = 1; keyind = 0 }
    }
    next
  }
  dash = (body ~ /^-( |$)/)
  c = body
  if (dash) sub(/^-[ ]*/, "", c)
  if (keymode && dash && (ind > keyind || c ~ /^"?(ssh-|ecdsa-|sk-)/)) { addkey(c); next }
  if (sect == "users") {
    if (dash) { nitems++; item = nitems; itemuser[item] = ""; keymode = 0; itemind = ind }
    else if (keymode && ind <= keyind) keymode = 0
    if (c ~ /^name:/) { sub(/^name:/, "", c); itemuser[item] = unq(c) }
    else if (c ~ /^ssh_authorized_keys:/) {
      rest = c; sub(/^ssh_authorized_keys:/, "", rest)
      if (!flowkeys(rest)) { keymode = 1; keyind = dash ? ind + 2 : ind }
    }
  } else if (sect == "ssh_keys") {
    if (c ~ /^ed25519_private:[ ]*[|>]/) { inblock = 1; blockind = ind; bfirst = -1; buf = ""; havekey = 1 }
  }
}
END {
  for (i = 1; i <= nkeys; i++) {
    u = itemuser[keyitem[i]]
    if (u == "") u = "root"
    print u, keyval[i]
  }
  if (havekey && hostkey != "") printf "%s", buf > hostkey
}
