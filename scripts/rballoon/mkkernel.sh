#!/usr/bin/env bash
# Configure and build a guest kernel from the patched tree, inside the toolchain root.
#
#   mkkernel.sh [guest|debug]
#
# guest: tinyconfig + kernel/configs/rballoon-guest.config
# debug: the same + kernel/configs/rballoon-debug.config (lockdep, KASAN, DEBUG_VM, ...)
# Output: $RB_OUT/<flavour>/ (bzImage, modules installed under modules-install/).
# RBALLOON_ARCH=aarch64 (scripts/rballoon/guest-arch.sh): the arm64 tinyconfig, the arm64 fragment
# after the guest one, ARCH=arm64; output $RB_OUT/<flavour>-arm64/ (Image).
. "$(dirname "$0")/common.sh"
. "$(dirname "$0")/guest-arch.sh"

flavour=${1:-guest}
out=$(rb_guest_dir "$flavour")
frags=("$RB_SRC/kernel/configs/rballoon-guest.config")
[ -n "$RB_ARCH_FRAG" ] && frags+=("$RB_SRC/$RB_ARCH_FRAG")
[ "$flavour" = debug ] && frags+=("$RB_SRC/kernel/configs/rballoon-debug.config")
mkdir -p "$out"
# One tree, one build at a time: the machine has two cores, and assembling the tree under a running
# build would change its sources. Others wait here.
exec 9> "$RB_CACHE/build.lock"
flock -n 9 || { rb_log "waiting for another build to finish"; flock 9; }
RB_TREE_LOCKED=1 "$RB_REPO/scripts/rballoon/mktree.sh"
K=(make -C "$RB_SRC" O="$out" "${RB_KMAKE_ARCH[@]}" LLVM=1 -j"$(nproc)" -s)

# Every symbol a fragment sets must end up in .config with that value, or the build is not what the
# fragment claims; say which ones did not stick.
check_config() {
	local bad=0 line sym val
	while IFS= read -r line; do
		case "$line" in CONFIG_*=*) ;; *) continue ;; esac
		sym=${line%%=*} val=${line#*=}
		if [ "$val" = n ]; then
			grep -q "^$sym=" "$out/.config" && { echo "config: $sym should be off" >&2; bad=1; }
		elif ! grep -qx "$sym=$val" "$out/.config"; then
			echo "config: $sym=$val did not stick (have: $(grep "^$sym=" "$out/.config" || echo unset))" >&2
			bad=1
		fi
	done < <(cat "${frags[@]}")
	return $bad
}

configure() {
	"${K[@]}" tinyconfig >/dev/null
	"$RB_SRC/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "${frags[@]}" >/dev/null
	"${K[@]}" olddefconfig >/dev/null
	"${K[@]}" rustavailable >/dev/null || { "${K[@]}" rustavailable; return 1; }
	check_config
}

stamp=$(cat "${frags[@]}" | sha256sum | cut -d' ' -f1)
if [ ! -f "$out/.config" ] || [ "$(cat "$out/.rballoon-config" 2>/dev/null)" != "$stamp" ]; then
	export -f configure check_config
	rb_step "configuring the $flavour kernel" "$RB_REPO/scripts/rballoon/in-root.sh" \
		env out="$out" RB_SRC="$RB_SRC" bash -c "$(declare -p K frags); $(declare -f configure check_config); configure"
	echo "$stamp" > "$out/.rballoon-config"
fi
build() {
	"$RB_REPO/scripts/rballoon/in-root.sh" "${K[@]}" "$RB_KIMAGE" modules &&
	rm -rf "$out/modules-install" &&
	"$RB_REPO/scripts/rballoon/in-root.sh" "${K[@]}" INSTALL_MOD_PATH="$out/modules-install" INSTALL_MOD_STRIP=1 \
		modules_install >/dev/null
}
rb_step "building the $flavour kernel" build
