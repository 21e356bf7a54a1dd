# Shared by scripts/asterisk.sh and scripts/build_pjsua2.sh (sourced; they define die()).

# Debian mirror URI from the host's apt configuration (deb822 first, then one-line format).
mirror_uri() {
    if [ -n "${IVR_DEBIAN_MIRROR:-}" ]; then echo "$IVR_DEBIAN_MIRROR"; return; fi
    local f uri=
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk 'tolower($1)=="uris:" { for (i = 2; i <= NF; i++) if ($i !~ /security|updates/) { print $i; exit } }' "$f")
        [ -n "$uri" ] && break
    done
    if [ -z "$uri" ]; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [ -f "$f" ] || continue
            uri=$(sed -e 's/\[[^]]*\]//' "$f" | awk '$1=="deb" && $2 !~ /security/ { print $2; exit }')
            [ -n "$uri" ] && break
        done
    fi
    [ -n "$uri" ] || die "no Debian mirror URI in the host's apt sources; set IVR_DEBIAN_MIRROR=http://..."
    echo "${uri%/}"
}
