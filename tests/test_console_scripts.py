"""Every console script of setup.py exits with status 0 when it succeeds (run through the installed
executable), and the help and docs name files that exist."""

import ast
import re

import pytest

from guided_diffusion.data.digits import write_digits_npz

from programs import REPO, assert_ok, run_script

# Success runs of the console scripts that the other test files do not already run through their executable.
TESTED_ELSEWHERE = {
    "pag-image-sample": "test_sampling.py", "pag-classifier-sample": "test_sampling.py",
    "pag-guidance-maps": "test_guidance_maps.py", "pag-inverse-sample": "test_inverse_dps.py",
    "pag-demo": "test_demo.py", "pag-layer-probe": "test_layer_probe.py",
    "pag-classifier-train": "test_noisy_classifier.py", "pag-gain-map": "test_gain_map.py",
}
TRAIN_FLAGS = ["--image_size", "8", "--num_channels", "32", "--channel_mult", "1,2", "--num_res_blocks", "1",
               "--attention_resolutions", "4", "--num_head_channels", "16", "--diffusion_steps", "20",
               "--data_dir", "digits", "--batch_size", "4", "--progress", "False"]


def prepare_digits(tmp_path):
    write_digits_npz(str(tmp_path / "heldout.npz"), image_size=16, split="heldout")
    return []


def prepare_graph(tmp_path):
    (tmp_path / "graph.pb").write_bytes(b"already downloaded")
    return []


SUCCESS = {
    "pag-sweep": ([REPO / "configs/sweeps/imagenet256/pag_scale.yaml", "--dry_run", "--output_dir", "{tmp}/sweep"],
                  None),
    "pag-image-train": ([*TRAIN_FLAGS, "--max_steps", "1", "--run_dir", "{tmp}/run"], None),
    "pag-train-digits-features": (["--epochs", "1", "--out", "{tmp}/features.pt"], None),
    "adm-evaluate": (["{tmp}/heldout.npz", "{tmp}/heldout.npz", "--backend", "digits", "--no_cache", "--quiet"],
                     prepare_digits),
    "adm-download-inception": (["--dest", "{tmp}/graph.pb"], prepare_graph),
    "pag-export-weights": ([REPO / "checkpoints/digits_adm16_ema.pt", "{tmp}/weights.pt"], None),
    "pag-checkpoint-quality": (["--config", REPO / "configs/digits/model.yaml", "--model_path",
                                REPO / "checkpoints/digits_adm16_ema.pt", "--backend", "digits", "--reference",
                                "{tmp}/heldout.npz", "--num_samples", "12", "--timestep_respacing", "ddim3",
                                "--output_dir", "{tmp}/quality"], prepare_digits),
}


def console_scripts():
    """The console script names declared in setup.py."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    return [ast.literal_eval(item).split("=")[0].strip() for item in value.elts]
    raise AssertionError("no console_scripts in setup.py")


def test_every_console_script_has_a_success_run_through_its_executable():
    assert sorted(console_scripts()) == sorted([*SUCCESS, *TESTED_ELSEWHERE])


@pytest.mark.e2e
@pytest.mark.parametrize("script", sorted(SUCCESS))
def test_console_script_exits_0_on_success(script, tmp_path):
    args, prepare = SUCCESS[script]
    if prepare:
        prepare(tmp_path)
    assert_ok(run_script(script, *[str(a).replace("{tmp}", str(tmp_path)) for a in args]))


@pytest.mark.e2e
def test_a_failing_console_script_exits_non_zero(tmp_path):
    result = run_script("pag-sweep", tmp_path / "no_such_spec.yaml")
    assert result.returncode != 0


# ----------------------------------------------------------------------------------------------------
# what the help, the README and the docs name

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_files_named_in_help_and_readme_exist():
    texts = [p.read_text() for p in sorted((REPO / "scripts").glob("*.py"))] + [p.read_text() for p in DOCS]
    named = {m for text in texts for m in re.findall(r"configs/[\w./-]+\.yaml", text)}
    assert named and not sorted(p for p in named if not (REPO / p).is_file())


def test_output_folders_of_readme_commands_are_ignored_by_git():
    readme = "\n".join(p.read_text() for p in DOCS)
    folders = {p.split("/")[0] for p in re.findall(r"--output_dir (\S+)", readme)}
    from scripts import inverse_sample
    folders.add(inverse_sample.RUN_FLAGS.defaults()["output_dir"].split("/")[0])  # where it writes by default
    ignored = {line.strip().strip("/") for line in (REPO / ".gitignore").read_text().splitlines()}
    assert folders and folders <= ignored, sorted(folders - ignored)


@pytest.mark.parametrize("module", ["image_sample", "guidance_maps"])
def test_help_shows_each_default_once(module):
    import importlib

    parser = importlib.import_module(f"scripts.{module}").create_argparser()
    formatter = parser._get_formatter()
    helps = {a.dest: formatter._expand_help(a) for a in parser._actions if a.option_strings and a.help}
    assert helps["model_path"].endswith("(default: )")  # the formatter adds defaults ...
    assert [dest for dest, text in helps.items() if text.count("(default") > 1] == []  # ... once


def test_readme_and_docs_link_only_to_files_that_exist():
    links = [(page, target) for page in DOCS for target in re.findall(r"\]\(([^)#]+)\)", page.read_text())
             if not target.startswith("http")]
    assert len(links) > 10 and not [(p.name, t) for p, t in links if not (p.parent / t).exists()]
