#!/usr/bin/env bash
# Assemble the patched kernel tree in the cache.
#
# 1. Once: extract the pristine linux-source-7.3 tarball from the toolchain root and commit it
#    (tag "pristine").
# 2. Every run: build the wanted history in a scratch index (never in the work tree), one commit per
#    entry of patches/series: a patch file is applied with `git apply --cached`, an "overlay" line adds
#    new files from this repo. Commits use fixed dates, so the same inputs give the same commit id.
# 3. Check it out with `git reset --hard`: git rewrites only files whose content differs, so unchanged
#    files keep their timestamps and kernel builds stay incremental.
. "$(dirname "$0")/common.sh"

export GIT_DIR=$RB_SRC/.git GIT_WORK_TREE=$RB_SRC
export GIT_AUTHOR_DATE='2026-01-01T00:00:00Z' GIT_COMMITTER_DATE='2026-01-01T00:00:00Z'
export GIT_COMMITTER_NAME=${GIT_COMMITTER_NAME:-rballoon} GIT_COMMITTER_EMAIL=${GIT_COMMITTER_EMAIL:-rballoon@localhost}
SERIES=$RB_REPO/patches/series

extract_pristine() {
	local tarball
	tarball=$(ls "$RB_ROOT"/usr/src/linux-source-7.3.tar.* 2>/dev/null | head -n1)
	[ -n "$tarball" ] || rb_die "no linux-source-7.3 tarball in the toolchain root"
	rm -rf "$RB_SRC.new"
	mkdir -p "$RB_SRC.new"
	tar -xf "$tarball" -C "$RB_SRC.new" --strip-components=1
	GIT_DIR=$RB_SRC.new/.git GIT_WORK_TREE=$RB_SRC.new sh -c '
		git init -q -b main && git add -A -f . &&
		GIT_AUTHOR_NAME=Debian GIT_AUTHOR_EMAIL=linux-source@localhost \
		git commit -q -m "Linux $(basename "$1" | sed "s/linux-source-\(.*\)\.tar.*/\1/") (Debian linux-source, pristine)" &&
		git tag pristine' _ "$tarball"
	rm -rf "$RB_SRC"
	mv "$RB_SRC.new" "$RB_SRC"
}

# Files of this repo that belong to the kernel tree: everything under the kernel's top-level
# directories, except the pipeline's own scripts.
overlay_files() {
	git -C "$RB_REPO" --git-dir="$RB_REPO/.git" --work-tree="$RB_REPO" ls-files -co --exclude-standard -- \
		rust drivers mm include Documentation tools kernel arch lib samples scripts |
		grep -v '^scripts/rballoon/' | while read -r f; do [ -f "$RB_REPO/$f" ] && echo "$f"; done
}

add_to_index() { # <repo-relative file>...
	local f mode blob
	for f in "$@"; do
		mode=100644; [ -x "$RB_REPO/$f" ] && mode=100755
		blob=$(git hash-object -w -- "$RB_REPO/$f")
		git update-index --add --cacheinfo "$mode,$blob,$f"
	done
}

commit_index() { # <parent> <message file> [author]
	local tree
	tree=$(git write-tree)
	GIT_AUTHOR_NAME=${3:-rballoon developers} GIT_AUTHOR_EMAIL=${4:-rballoon@localhost} \
		git commit-tree "$tree" -p "$1" -F "$2"
}

build_history() {
	local head line kind rest msg patch files info tmpd author email claimed
	tmpd=$(mktemp -d)
	export GIT_INDEX_FILE=$tmpd/index
	git read-tree pristine
	head=$(git rev-parse pristine)
	claimed=$tmpd/claimed
	: > "$claimed"
	overlay_files | sort > "$tmpd/all"
	if [ -f "$SERIES" ]; then
		while read -r kind rest; do
			case "$kind" in
			''|'#'*) continue ;;
			overlay)
				# overlay <message file> <path prefix>...
				read -r msg files <<< "$rest"
				: > "$tmpd/these"
				for p in $files; do
					awk -v p="$p" 'index($0, p) == 1' "$tmpd/all" >> "$tmpd/these"
				done
				sort -u "$tmpd/these" -o "$tmpd/these"
				[ -s "$tmpd/these" ] || rb_die "patches/series: overlay '$msg' matches no file"
				mapfile -t flist < "$tmpd/these"
				add_to_index "${flist[@]}"
				cat "$tmpd/these" >> "$claimed"
				head=$(commit_index "$head" "$RB_REPO/patches/$msg")
				;;
			*)
				patch=$RB_REPO/patches/$kind
				[ -f "$patch" ] || rb_die "patches/series names $kind, which does not exist"
				git apply --cached --whitespace=nowarn "$patch" ||
					rb_die "patch $kind no longer applies to the tree"
				git mailinfo "$tmpd/msg" "$tmpd/body" < "$patch" > "$tmpd/info"
				{ sed -n 's/^Subject: //p' "$tmpd/info"; echo; cat "$tmpd/msg"; } > "$tmpd/message"
				author=$(sed -n 's/^Author: //p' "$tmpd/info")
				email=$(sed -n 's/^Email: //p' "$tmpd/info")
				head=$(commit_index "$head" "$tmpd/message" "$author" "$email")
				;;
			esac
		done < "$SERIES"
	fi
	sort -u "$claimed" -o "$claimed"
	comm -23 "$tmpd/all" "$claimed" > "$tmpd/rest"
	if [ -s "$tmpd/rest" ]; then
		rb_log "overlay files not in patches/series (committed as 'rballoon: work in progress'):"
		sed 's/^/    /' "$tmpd/rest" >&2
		mapfile -t flist < "$tmpd/rest"
		add_to_index "${flist[@]}"
		printf 'rballoon: work in progress\n\nOverlay files not yet assigned to a commit in patches/series.\n' > "$tmpd/message"
		head=$(commit_index "$head" "$tmpd/message")
	fi
	unset GIT_INDEX_FILE
	rm -rf "$tmpd"
	echo "$head"
}

# The tree must not change under a running build: take the build lock unless our caller holds it.
if [ -z "${RB_TREE_LOCKED:-}" ]; then
	mkdir -p "$RB_CACHE"
	exec 9> "$RB_CACHE/build.lock"
	flock -n 9 || { rb_log "waiting for a build to finish"; flock 9; }
fi
[ -d "$RB_SRC/.git" ] || rb_step "extracting the pristine 7.3 source" extract_pristine
want=$(build_history) && [ -n "$want" ] || rb_die "could not assemble the patched tree (see above)"
if [ "$(git rev-parse HEAD)" != "$want" ]; then
	git reset -q --hard "$want"
	rb_log "patched tree at $(git log --oneline -1 HEAD) ($(git rev-list --count pristine..HEAD) commits on pristine)"
fi
