"""`cggm-seg report`: curves from TensorBoard event files, the slice montage, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from cggm_seg import cli
from cggm_seg.networks import MultiModalUNet3D
from cggm_seg.plots import moving_average
from cggm_seg.report import modality_series, read_scalars

CHANNELS = [4, 8, 16, 32]


def write_run(run_dir, with_cggm=True):
    """Event files as the bundle writes them: one from the trainer, one from the evaluator."""
    trainer = SummaryWriter(str(run_dir))
    for step in range(1, 11):
        trainer.add_scalar("loss", 1.0 / step, step)
        if with_cggm:
            for name, value in (("flair", 0.5), ("t1ce", 1.5)):
                trainer.add_scalar(f"cggm/coeff/{name}", value, step)
                trainer.add_scalar(f"cggm/utilisation/{name}", value * step / 20, step)
            trainer.add_scalar("cggm/l_gm", 0.1, step)
    trainer.close()
    evaluator = SummaryWriter(str(run_dir))
    for epoch in (1, 2):
        evaluator.add_scalar("val_mean_dice", 0.3 * epoch, epoch)
        evaluator.add_scalar("val_dice_wt", 0.4 * epoch, epoch)
    evaluator.close()


def test_scalars_are_merged_over_event_files(tmp_path):
    write_run(tmp_path)
    scalars = read_scalars(tmp_path)
    assert scalars["loss"][0] == list(range(1, 11))
    assert scalars["val_mean_dice"] == ([1, 2], [pytest.approx(0.3), pytest.approx(0.6)])
    assert set(modality_series(scalars, "coeff")) == {"flair", "t1ce"}


def test_report_writes_the_curves_and_notes_what_is_missing(tmp_path, capsys):
    write_run(tmp_path / "run")
    assert cli.main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    for name in ("loss", "val_dice", "utilisation", "coefficients"):
        assert (tmp_path / "out" / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
    assert "no cggm/cosine/<modality> curves: cosines.png not written" in printed
    assert "montage skipped: pass --dataset-dir" in printed


def test_report_of_a_joint_training_run_has_no_modulation_plots(tmp_path, capsys):
    write_run(tmp_path, with_cggm=False)
    assert cli.main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report" / "loss.png").is_file()
    assert not (tmp_path / "report" / "coefficients.png").exists()


def test_a_folder_without_event_files_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no TensorBoard event files" in capsys.readouterr().err


@pytest.fixture
def dataset(tmp_path):
    from data_prep.brats_datalist import write_datalist
    from data_prep.synth_brats import write_brats_dataset

    root = tmp_path / "data"
    write_brats_dataset(root, cases=3, size=16, seed=0)
    write_datalist(root, root / "datalist.json", folds=3)
    return root


@pytest.mark.slow
def test_montage_of_a_validation_case(tmp_path, dataset, capsys):
    write_run(tmp_path / "run")
    torch.manual_seed(0)
    torch.save(MultiModalUNet3D(channels=CHANNELS).state_dict(), tmp_path / "run" / "model.pt")
    argv = [
        "report",
        str(tmp_path / "run"),
        "--dataset-dir",
        str(dataset),
        "--override",
        "roi_size=[16,16,16]",
    ]
    assert cli.main(argv) == 2  # the bundle's default channels do not fit this checkpoint
    assert "--override 'network_def#channels=" in capsys.readouterr().err
    assert cli.main([*argv, "--override", f"network_def#channels={CHANNELS}".replace(" ", "")]) == 0
    assert (tmp_path / "run" / "report" / "montage.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out


def test_moving_average_keeps_length_and_means():
    torch.testing.assert_close(
        torch.as_tensor(moving_average([0.0, 3.0, 6.0], 3)),
        torch.tensor([1.5, 3.0, 4.5], dtype=torch.float64),
    )
    assert list(moving_average([1.0, 2.0], 1)) == [1.0, 2.0]
