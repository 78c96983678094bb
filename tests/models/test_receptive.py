"""fastcifar.models.receptive (receptive field, jump and output size per layer) and the summary
command that prints it beside torchinfo's table."""

from __future__ import annotations

import torch
from torch import nn

from fastcifar.models import create_model
from fastcifar.models.receptive import receptive_field_table
from fastcifar.summary import main as summary_main


def test_receptive_fields_match_the_seeds():
    assert receptive_field_table(create_model("s7"))[-1].receptive_field == 61
    assert receptive_field_table(create_model("c1c2c3c40"))[-1].receptive_field == 59


def test_squeeze_excitation_and_channel_shuffle_do_not_break_the_trace():
    # EfficientNet-B0: 3x3 stem, then per stage (k - 1) x jump per depthwise conv and the
    # stride-2 ones; the SE gates (global pools broadcast back) add nothing: 443 with
    # the final global pool over the 2x2 map
    rows = receptive_field_table(create_model("efficientnet_b0"))
    assert rows[-1].receptive_field == 443 and rows[-1].op == "adaptive_pool"
    assert len([r for r in rows if r.op == "adaptive_pool"]) == 17  # 16 SE gates + the head
    # ShuffleNetV2: the field survives the split, the 5-D shuffle view and the concat
    rows = receptive_field_table(create_model("shufflenetv2"))
    assert rows[-1].receptive_field == 157 and rows[-1].output_size == 1


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)  # RF 3, jump 1
        self.b = nn.Conv2d(4, 4, 3, stride=2, dilation=2, padding=2)  # RF 3 + 4 = 7, jump 2
        self.skip = nn.Conv2d(4, 4, 1, stride=2)  # RF 3, jump 2
        self.c = nn.Conv2d(4, 4, 3, padding=1)  # max(7, 3) + 2 * 2 = 11, jump 2

    def forward(self, x):
        x = self.a(x)
        x = torch.relu(self.b(x)) + self.skip(x)
        x = self.c(x)
        return nn.functional.max_pool2d(x, 2)  # 11 + 1 * 2 = 13, jump 4


def test_receptive_field_by_hand():
    rows = receptive_field_table(_Branchy(), input_size=16)
    by_layer = {r.layer: r for r in rows}
    assert [by_layer[n].receptive_field for n in ("a", "b", "skip", "c")] == [3, 7, 3, 11]
    assert by_layer["b"].jump_in == 1 and by_layer["c"].jump_in == 2
    assert rows[-1].receptive_field == 13 and rows[-1].output_size == 4


def test_summary_cli(capsys):
    assert summary_main(["--model", "c1c2c3c40"]) == 0
    out = capsys.readouterr().out
    assert "trainable parameters 178,178 of 178,178" in out and "convblock2.0.0" in out
    assert "Units." not in out and "million multiply-adds per image" in out
    assert "receptive field 59" in out and "dilation" in out and "jump" in out
