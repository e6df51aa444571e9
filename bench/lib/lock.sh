# Shared by the benches that build the default recipe (sourced, not run).
#
# bench_build LOCK LOG CMD...: runs CMD (a `herd image build` of a recipe copy
# whose lock file LOCK sits beside it) with its output in LOG. The benches
# copy the committed lock so that they measure the versions it pins; when the
# archive no longer offers one of them (Ubuntu's -updates and -security
# pockets index only each package's newest version, so an update supersedes
# a locked one), the bench says so, drops the copy's lock and builds once more
# against the archive's versions today, as make test and make demo do (they
# never copy the lock). Any other failure is returned as is.
bench_build() {
	local lock=$1 log=$2
	shift 2
	"$@" >"$log" 2>&1 && return 0
	if [ -e "$lock" ] && grep -q "pinned package .* lock file .* the archive no longer offers" "$log"; then
		echo "bench: the committed lock is stale ($(grep -o 'pinned package [^;]*' "$log" | head -n1)); building against the archive's versions today. Refresh it: bin/herd image build --update-lock recipes/$(basename "$lock" .lock).yaml" >&2
		rm -f "$lock"
		"$@" >"$log" 2>&1 && return 0
	fi
	return 1
}
