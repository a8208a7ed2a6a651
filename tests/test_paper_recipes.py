"""recipes/paper/: the seed paper's arms (alternate_sg README) on its QRNN, dni_awd_qrnn_lm, on tiny local data.

* the default base is the paper's QRNN with the flags of its README's commands; ``--base lstm`` is
  AWD-LSTM's LSTM with the command the recipe gave before the QRNN existed, flag for flag, under its own
  run name; its Hydra twin is the YAML with the overrides the YAML names;
* every PTB arm's --size smoke command trains the QRNN (one binarized corpus shared by all), and its mode and
  learning rate at every epoch are those of the paper's training loop on the same schedule shape
  (tests/test_schedule.py's independent reference ``paper_epochs``);
* WikiText-2's arms are PTB's but for the paper's --clip, --dropouth and the alternating arms' first
  epoch; one of them runs the whole recipe (binarize, train, fairseq-eval-lm on the best checkpoint);
* every arm's fairseq-train command and its Hydra twin give the same fairseq configuration, and
  fairseq-hydra-train runs a twin;
* the DNI arms run the paper's synthesizer as its code computes it (scan, the paper grid's flags);
  ``--synthesizer coordinatewise`` changes the synthesizer's flags only (the paper grid's coordinate-wise
  rows), and its Hydra twin is the YAML with the overrides the YAML names;
* an unknown arm, synthesizer or base is one line.
"""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from omegaconf import OmegaConf

from helpers import REPO, fairseq, write_corpus
from studies.paper_grid import run as paper_grid
from test_recipes import assert_yaml_is_the_command, recipe_config, run_recipe
from test_schedule import paper_epochs

ARMS = ["bptt", "dni", "dni-restart160", "dni-restart5", "alternating-restart160", "alternating-restart5"]
# the paper's schedule of each arm at the smoke size's shape (4 epochs: cycles 1,1,2 for restart base 5,
# 2,2 for 160/320), as arguments of paper_epochs; WikiText-2's alternating arms add --whenswitch 2
SMOKE_REFERENCE = {
    "bptt": dict(restart_base=[9999], restart_lr=False),
    "dni": dict(restart_base=[9999], restart_lr=False, whenswitch=(2,)),
    "dni-restart160": dict(restart_base=[2, 4], whenswitch=(2,)),
    "dni-restart5": dict(restart_base=[1], whenswitch=(2,)),
    "alternating-restart160": dict(restart_base=[2, 4], mixture=True),
    "alternating-restart5": dict(restart_base=[1], mixture=True),
}


@pytest.fixture(scope="module")
def paper_text(tmp_path_factory):
    """A local corpus in PTB's and in WikiText-2's file names (about one 200-token window per stream)."""
    plain = tmp_path_factory.mktemp("paper-plain")
    write_corpus(str(plain), seed=4, sizes=(("train", 500), ("valid", 60), ("test", 40)), vocab=40)
    folders = {}
    for corpus, pattern in (("ptb", "ptb.{split}.txt"), ("wikitext2", "wiki.{split}.tokens")):
        folder = tmp_path_factory.mktemp(f"paper-{corpus}")
        for split in ("train", "valid", "test"):
            (folder / pattern.format(split=split)).write_bytes((plain / f"{split}.txt").read_bytes())
        folders[corpus] = str(folder)
    return folders


def dry_run(corpus, arm, text, out, *flags):
    """The arm's fairseq-train command (binarizing the text into ``out`` the first time)."""
    command = run_recipe(f"paper/{corpus}", "--arm", arm, "--data-dir", text, "--out", out, "--dry-run", *flags)
    return shlex.split(command.strip().splitlines()[-1])


def per_epoch(out, pattern=r"\| train \| (\{.*\})", prefix="train_"):
    """(mode, learning rate) of every epoch, from the epoch-end training records."""
    rows = [json.loads(m) for m in re.findall(pattern, out)]
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    return [("synthetic" if float(r.get(f"{prefix}dni_synthetic", 0)) else "real", float(r[f"{prefix}lr"]))
            for r in rows]


def assert_papers_schedule(got, arm, corpus="ptb", epochs=4):
    """``got`` (per_epoch) is the paper's loop (Adam 1e-3) on the smoke schedule of ``arm``."""
    ref = dict(SMOKE_REFERENCE[arm])
    if corpus == "wikitext2" and arm.startswith("alternating"):
        ref["whenswitch"] = (2,)
    want = paper_epochs(epochs, **ref)
    assert [mode for mode, _ in got] == [mode for _, mode in want], (corpus, arm)
    assert [lr for _, lr in got] == pytest.approx([1e-3 * lr for lr, _ in want], rel=1e-6), (corpus, arm)


@pytest.fixture(scope="module")
def ptb_out(paper_text, tmp_path_factory):
    """One output folder for every PTB smoke run: one binarized corpus (data-bin-smoke), one checkpoint folder per arm."""
    out = str(tmp_path_factory.mktemp("paper-ptb-out"))
    dry_run("ptb", "bptt", paper_text["ptb"], out, "--size", "smoke")
    return out


@pytest.mark.parametrize("arm", ARMS)
def test_every_ptb_arm_trains_at_smoke_size_on_the_papers_schedule(arm, paper_text, ptb_out):
    command = dry_run("ptb", arm, paper_text["ptb"], ptb_out, "--size", "smoke", "--cpu")
    assert command[0].endswith("fairseq-train") and command[1] == os.path.join(ptb_out, "data-bin-smoke")
    assert command[command.index("--arch") + 1] == "dni_awd_qrnn_lm"
    assert_papers_schedule(per_epoch(fairseq("fairseq-train", *command[1:])), arm)
    assert os.path.exists(os.path.join(ptb_out, f"checkpoints-smoke-paper-{arm}", "checkpoint_best.pt"))


def test_wikitext2_arms_differ_from_ptb_only_where_the_paper_does(paper_text, tmp_path):
    def flags(corpus, arm):
        argv = dry_run(corpus, arm, paper_text[corpus], str(tmp_path / corpus))[1:]
        argv = [a.replace(f"/{corpus}/", "/CORPUS/") for a in argv]  # the data and save folders
        return dict(zip(*[iter(_pairs(argv))] * 2))

    for arm in ARMS:
        ptb, wt2 = flags("ptb", arm), flags("wikitext2", arm)
        differ = {k for k in ptb.keys() | wt2.keys() if ptb.get(k) != wt2.get(k)}
        expected = {"--clip-norm", "--decoder-hidden-dropout"}
        if arm.startswith("alternating"):  # WikiText-2's alternating commands also pass --whenswitch 2
            expected |= {"--first-mode", "--real-first-epochs"}
        assert differ == expected, arm
        assert (ptb["--clip-norm"], wt2["--clip-norm"]) == ("0.2", "0.25")
        assert (ptb["--decoder-hidden-dropout"], wt2["--decoder-hidden-dropout"]) == ("0.3", "0.2")


def _pairs(argv):
    """argv as flag, value, flag, value, ... (a flag without a value gets 'true'; the data folder is skipped)."""
    out, i = [], 1
    while i < len(argv):
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out += [argv[i], argv[i + 1]]
            i += 2
        else:
            out += [argv[i], "true"]
            i += 1
    return out


def test_a_wikitext2_arm_runs_the_whole_recipe(paper_text, tmp_path):
    out = run_recipe("paper/wikitext2", "--arm", "alternating-restart5", "--data-dir", paper_text["wikitext2"],
                     "--cpu", "--size", "smoke", "--out", str(tmp_path))
    assert_papers_schedule(per_epoch(out), "alternating-restart5", "wikitext2")
    assert re.search(r"loading model\(s\) from \S+/checkpoints-smoke-paper-alternating-restart5/checkpoint_best\.pt",
                     out)  # eval-lm scores the best checkpoint, as the paper does
    ppl = float(re.search(r"wikitext2 test perplexity \(fairseq-eval-lm, smoke-paper-alternating-restart5\): "
                          r"([0-9.]+)", out).group(1))
    assert 1 < ppl < 100
    assert os.path.exists(tmp_path / "train-smoke-paper-alternating-restart5.log")


@pytest.mark.parametrize("corpus", ["ptb", "wikitext2"])
@pytest.mark.parametrize("arm", ARMS)
def test_hydra_twin_is_the_paper_recipe(corpus, arm, paper_text, tmp_path_factory):
    out = str(tmp_path_factory.getbasetemp() / f"paper-{corpus}-twin")
    cfg, argv = recipe_config(f"paper/{corpus}", paper_text[corpus], out, "--arm", arm)
    assert_yaml_is_the_command(f"{corpus} {arm}", cfg, argv,
                               os.path.join(REPO, "recipes", "paper", "config", f"{corpus}_{arm}.yaml"))


def test_hydra_train_runs_a_paper_twin(ptb_out, tmp_path_factory):
    data = os.path.join(ptb_out, "data-bin-smoke")
    out = fairseq("fairseq-hydra-train", "--config-dir", os.path.join(REPO, "recipes", "paper", "config"),
                  "--config-name", "wikitext2_alternating-restart5", f"task.data={data}",
                  f"checkpoint.save_dir={tmp_path_factory.mktemp('hydra-ck')}",
                  f"hydra.run.dir={tmp_path_factory.mktemp('hydra')}", f"common.user_dir={REPO}/fairseq_dni", "common.cpu=true", "dataset.num_workers=0",
                  "model.decoder_embed_dim=16", "model.decoder_hidden_size=32", "optimization.max_epoch=4",
                  "lr_scheduler.lr_period_epochs='1,1,2'")
    assert_papers_schedule(per_epoch(out, r"\[train\]\[INFO\] - (\{.*\})"), "alternating-restart5", "wikitext2")


# the paper's base model: its README's commands (--model QRNN --nhid 1550 --nlayers 4 --emsize 400 --wdrop 0.1
# --dropouti 0.4, PTB's --dropouth 0.3), main.py's defaults (--dropout 0.4 --dropoute 0.1, tied) and model.py's
# QRNN (the first layer's window 2, the last layer as wide as the embedding)
PAPERS_QRNN = dict(decoder_embed_dim=400, decoder_hidden_size=1550, decoder_layers=4, decoder_last_layer_out_dim=True,
                   share_decoder_input_output_embed=True, qrnn_window=2, weight_drop=0.1, decoder_dropout_in=0.4,
                   decoder_hidden_dropout=0.3, dropout=0.4, decoder_dropout_out=0.4, decoder_embed_dropout=0.1,
                   locked_dropout=True)
# recipes/paper/ptb.sh --arm dni-restart5 as it trained AWD-LSTM before the QRNN was its base (its TRAIN_FLAGS)
LSTM_DNI_RESTART5 = (
    "--task dni_language_modeling --arch dni_awd_lstm_lm --decoder-dropout-in 0.4 --decoder-hidden-dropout 0.3 "
    "--batch-size 20 --batch-size-valid 10 --tokens-per-sample 200 --variable-window --alpha 2 --beta 1 "
    "--optimizer alternating --base-optimizer adam --lr 0.001 --weight-decay 1.2e-6 --clip-norm 0.2 "
    "--max-epoch 320 --seed 42 --log-interval 200 --criterion dni_cross_entropy --dni-scale 0.1 "
    "--dni-synthesizer scan --dni-synthesizer-hidden 50 --dni-synthesizer-layers 1 --dni-synthesizer-init paper "
    "--dni-lr 0.001 --dni-weight-decay 1.2e-6 --lr-scheduler cosine_alternating --lr-step-per-epoch --min-lr 0 "
    "--lr-period-epochs 5,5,10,20,40,80,160 --mode-schedule synthetic --real-first-epochs 1").split()


def test_the_default_base_is_the_papers_qrnn(paper_text, ptb_out):
    cfg, argv = recipe_config("paper/ptb", paper_text["ptb"], ptb_out, "--arm", "dni-restart5")
    assert argv[argv.index("--arch") + 1] == "dni_awd_qrnn_lm"
    assert {field: cfg.model[field] for field in PAPERS_QRNN} == PAPERS_QRNN
    assert cfg.criterion.dni_synthesizer == "scan"
    assert dry_run("ptb", "dni-restart5", paper_text["ptb"], ptb_out, "--base", "qrnn")[1:] == argv


def test_base_lstm_is_the_lstm_command_under_its_own_name(paper_text, ptb_out):
    """--base lstm: the command the recipe gave before its base was the QRNN, flag for flag; every arm and
    synthesizer differs from the QRNN's in --arch and the run's name only (paper-ARM-lstm[-coordinatewise])."""
    lstm = dry_run("ptb", "dni-restart5", paper_text["ptb"], ptb_out, "--base", "lstm")
    assert lstm[lstm.index("--task"):] == LSTM_DNI_RESTART5
    assert lstm[lstm.index("--save-dir") + 1] == os.path.join(ptb_out, "checkpoints-full-paper-dni-restart5-lstm")
    for arm in ARMS:
        for synthesizer in ("scan", "coordinatewise"):
            qrnn = dry_run("ptb", arm, paper_text["ptb"], ptb_out, "--synthesizer", synthesizer)
            lstm = dry_run("ptb", arm, paper_text["ptb"], ptb_out, "--synthesizer", synthesizer, "--base", "lstm")
            run = f"paper-{arm}" + ("-coordinatewise" if synthesizer != "scan" and arm != "bptt" else "")
            assert qrnn[qrnn.index("--save-dir") + 1] == os.path.join(ptb_out, f"checkpoints-full-{run}")
            want = [a.replace("dni_awd_qrnn_lm", "dni_awd_lstm_lm").replace(f"full-paper-{arm}", f"full-paper-{arm}-lstm")
                    for a in qrnn]
            assert lstm == want, (arm, synthesizer)


def test_the_lstm_twin_is_the_yaml_with_its_overrides(paper_text, ptb_out, tmp_path):
    """The overrides every YAML names for --base lstm give that command's configuration."""
    cfg, argv = recipe_config("paper/ptb", paper_text["ptb"], ptb_out, "--arm", "dni-restart5", "--base", "lstm")
    yaml_path = os.path.join(REPO, "recipes", "paper", "config", "ptb_dni-restart5.yaml")
    with open(yaml_path) as f:
        named = re.search(r"--base lstm is\n\s*# (.*)\n", f.read()).group(1).split()
    assert [o.split("=")[0] for o in named] == ["model._name", "model.decoder_hidden_size", "model.decoder_layers",
                                               "model.weight_drop"]
    yaml = OmegaConf.merge(OmegaConf.load(yaml_path), OmegaConf.from_dotlist(named))
    OmegaConf.save(yaml, tmp_path / "twin.yaml")
    assert_yaml_is_the_command("ptb dni-restart5 lstm", cfg, argv, str(tmp_path / "twin.yaml"))


def split_synthesizer(argv):
    """(the --dni-synthesizer* flags with their values, in order; the rest of the command)."""
    synth, rest, i = [], [], 0
    while i < len(argv):
        if argv[i].startswith("--dni-synthesizer"):
            synth += argv[i:i + 2]
            i += 2
        else:
            rest.append(argv[i])
            i += 1
    return synth, rest


def test_the_dni_arms_run_scan_and_coordinatewise_changes_the_synthesizer_only(paper_text, ptb_out):
    """The paper's --sgtype QRNN as its code computes it by default, with the paper grid's flags; the
    coordinate-wise option (the grid's other rows) differs in the synthesizer's flags and the run's name."""
    for arm in [a for a in ARMS if a != "bptt"]:
        scan, rest = split_synthesizer(dry_run("ptb", arm, paper_text["ptb"], ptb_out))
        coordinatewise, other = split_synthesizer(dry_run("ptb", arm, paper_text["ptb"], ptb_out,
                                                          "--synthesizer", "coordinatewise"))
        assert scan == paper_grid.SCAN and coordinatewise == paper_grid.COORDINATEWISE, arm
        save_dir = other.index("--save-dir") + 1
        assert other[save_dir] == rest[save_dir] + "-coordinatewise"   # its own checkpoints and logs
        assert other[:save_dir] + other[save_dir + 1:] == rest[:save_dir] + rest[save_dir + 1:], arm
    bptt = dry_run("ptb", "bptt", paper_text["ptb"], ptb_out, "--synthesizer", "coordinatewise")
    assert bptt == dry_run("ptb", "bptt", paper_text["ptb"], ptb_out)   # no synthesizer: the same run


def test_the_coordinatewise_twin_is_the_yaml_with_its_overrides(paper_text, tmp_path):
    """The overrides the DNI YAMLs name for --synthesizer coordinatewise give that command's configuration."""
    cfg, argv = recipe_config("paper/ptb", paper_text["ptb"], str(tmp_path / "out"), "--arm", "dni-restart5",
                              "--synthesizer", "coordinatewise")
    yaml_path = os.path.join(REPO, "recipes", "paper", "config", "ptb_dni-restart5.yaml")
    with open(yaml_path) as f:
        named = re.search(r"coordinatewise is (criterion\.\S+) (criterion\.\S+)\n\s*# (criterion\.\S+)",
                          f.read())
    yaml = OmegaConf.merge(OmegaConf.load(yaml_path), OmegaConf.from_dotlist(list(named.groups())))
    OmegaConf.save(yaml, tmp_path / "twin.yaml")
    assert_yaml_is_the_command("ptb dni-restart5 coordinatewise", cfg, argv, str(tmp_path / "twin.yaml"))


def test_an_unknown_synthesizer_is_one_line():
    proc = subprocess.run(["bash", os.path.join(REPO, "recipes", "paper", "ptb.sh"), "--arm", "dni",
                           "--synthesizer", "mlp"], env=dict(os.environ, DNI_PYTHON=sys.executable),
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == ("recipes/paper/ptb.sh: error: --synthesizer must be one of: scan coordinatewise "
                                   "(got 'mlp')")


def test_an_unknown_base_is_one_line():
    proc = subprocess.run(["bash", os.path.join(REPO, "recipes", "paper", "ptb.sh"), "--arm", "dni",
                           "--base", "gru"], env=dict(os.environ, DNI_PYTHON=sys.executable),
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "recipes/paper/ptb.sh: error: --base must be one of: qrnn lstm (got 'gru')"


def test_an_unknown_arm_is_one_line():
    proc = subprocess.run(["bash", os.path.join(REPO, "recipes", "paper", "ptb.sh"), "--arm", "restart7"],
                          env=dict(os.environ, DNI_PYTHON=sys.executable), capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == ("recipes/paper/ptb.sh: error: --arm must be one of: bptt dni dni-restart160 "
                                   "dni-restart5 alternating-restart160 alternating-restart5 (got 'restart7')")
