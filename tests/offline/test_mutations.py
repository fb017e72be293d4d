"""The deployment mutation suite: each mutant of mutants.py (a realistic mistake in
flake.nix, the Tiltfile, k8s/ or a script) is applied to a copy of this checkout, and
the checks it names (deploychecks.py, run in-process on the copy) must report at least
one problem; on the unmutated copy they report none. The summary line of the run says
"deployment mutation suite: N mutants, N caught".

The image check evaluates the copy's flake for real (nixeval.py: Nix 2.26 in the chroot,
a few seconds a mutant); without that evaluation its mutants are skipped (failed under
CI=true), like the flake tests."""
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

import deploychecks
import nixeval
from conftest import MUTATION_RESULTS, ROOT
from mutants import IMAGE, MUTANTS


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    """The files of this checkout that git tracks or would track, in a scratch directory."""
    root = str(tmp_path_factory.mktemp("mutation") / "repo")
    for f in nixeval.tracked_files():
        os.makedirs(os.path.join(root, os.path.dirname(f)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, f), os.path.join(root, f))
    return root


def evaluate(root, scratch, mutant=None):
    """(CompletedProcess, report) of the flake of `root`, with `mutant` applied."""
    edits = {mutant.file: lambda t: t.replace(mutant.old, mutant.new, 1)} if mutant else None
    return nixeval.report(nixeval.make_stage(os.path.join(scratch, "stage"), edits, source=root))


@pytest.fixture(scope="module")
def reports(copy, tmp_path_factory):
    """The evaluated flake of each mutant the image check must catch, evaluated a few at
    a time (each evaluation mostly waits: a few seconds alone, about 1 s in parallel)."""
    try:
        nixeval.need_real_evaluation()
    except pytest.skip.Exception:
        return None  # the image mutants skip with the reason; the others run
    scratch = tmp_path_factory.mktemp("reports")
    todo = [m for m in MUTANTS if IMAGE in m.checks and m.old in read(os.path.join(copy, m.file))]
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = pool.map(lambda m: evaluate(copy, str(scratch / m.name), m), todo)
        return {m.name: r for m, r in zip(todo, done)}


def read(path):
    with open(path) as f:
        return f.read()


def image_check(evaluated, root):
    r, report = evaluated
    if r.returncode != 0:
        return [f"the flake does not evaluate: {r.stderr.strip()[-400:]}"]
    return deploychecks.image_problems(report, root)


def run_check(name, root, scratch, server_bin, mutated=None):
    """The problems check `name` finds in the checkout at `root` (for the image check,
    `mutated` is the mutant's evaluated flake)."""
    os.makedirs(scratch, exist_ok=True)
    if name == "image":
        return image_check(mutated if isinstance(mutated, tuple) else evaluate(root, scratch), root)
    if name == "manifests":
        return deploychecks.manifest_problems(root)
    if name == "server-args":
        return deploychecks.server_args_problems(root, server_bin)
    if name == "tilt":
        return deploychecks.tilt_problems(root, scratch)
    if name == "faults":
        return deploychecks.fault_problems(root, server_bin)
    if name == "scripts":
        return deploychecks.script_problems(root, only=[mutated] if isinstance(mutated, str) else None)
    raise ValueError(f"no check {name}")


def test_mutants_are_named_once_and_name_known_checks():
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names))
    for m in MUTANTS:
        assert set(m.checks) <= {"image", "manifests", "server-args", "tilt", "faults", "scripts"}, m.name


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_every_mutant_applies_to_its_file_once(mutant):
    """A mutant whose text is gone fails loudly: the list must follow the files."""
    with open(os.path.join(ROOT, mutant.file)) as f:
        text = f.read()
    n = text.count(mutant.old)
    assert n == 1, f"{mutant.name}: {mutant.old!r} is in {mutant.file} {n} times, not once; update mutants.py"


@pytest.mark.parametrize("check", ["image", "manifests", "server-args", "tilt", "faults", "scripts"])
def test_the_unmutated_copy_passes(copy, tmp_path, server_bin, check):
    if check == "image":
        nixeval.need_real_evaluation()
    assert run_check(check, copy, str(tmp_path), server_bin) == []


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_mutant_is_caught(copy, tmp_path, server_bin, reports, mutant):
    if IMAGE in mutant.checks:
        nixeval.need_real_evaluation()
    path = os.path.join(copy, mutant.file)
    with open(path) as f:
        original = f.read()
    assert original.count(mutant.old) == 1, f"{mutant.name}: {mutant.old!r} is not in {mutant.file} once"
    mode = os.stat(path).st_mode
    try:
        with open(path, "w") as f:
            f.write(original.replace(mutant.old, mutant.new, 1))
        found = {c: run_check(c, copy, str(tmp_path / c), server_bin,
                              reports[mutant.name] if c == IMAGE else mutant.file) for c in mutant.checks}
    finally:
        with open(path, "w") as f:
            f.write(original)
        os.chmod(path, mode)
    caught = any(found.values())
    MUTATION_RESULTS[mutant.name] = caught
    print(f"{mutant.name}: {found}")
    assert caught, f"{mutant.name} ({mutant.file}) passed {', '.join(mutant.checks)}"
