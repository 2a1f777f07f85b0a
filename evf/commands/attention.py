"""``evf attention``: save BEiT-3 attention heatmaps over the image (paper Fig.8).

For each fusion layer, the attention of the image ``[CLS]`` (or one text token) to the image
patches, summed over heads, is blended over the image as ``layerNN.png``; the raw maps
``[layers, gh, gw]`` go to ``attention.npy``. Checkpoints load exactly as in ``evf predict`` (``evf.load``).
"""
from __future__ import annotations

from collections.abc import Sequence

from evf.commands.common import CHECKPOINT_HELP, CONFIG_HELP, command_line_prompt, load_model, parse_device, prepare_out_dir
from evf.errors import OneLineParser


def parse_args(argv: Sequence[str]):
    p = OneLineParser(prog="evf attention", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--prompt", required=True, help="the text prompt")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--query", default="image_cls",
                   help="whose attention: image_cls (default, the token EVF-SAM feeds to SAM) or text:<i> (i-th text token, 0 = <s>)")
    p.add_argument("--layers", type=int, nargs="+", help="layer numbers, 1 = first (default: every layer the encoder runs)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    return p.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    from evf.attention import attention_maps, parse_query, save_heatmaps
    from evf.io import read_image

    args = parse_args(argv)
    prompt = command_line_prompt(args.prompt, "--prompt")
    parse_query(args.query)  # reject a malformed query before the slow model load
    image = read_image(args.image)  # cheap checks before the slow model load
    folder = prepare_out_dir(args.out)
    device = parse_device(args.device)
    model = load_model(args.checkpoint, args.config).to(device).eval()
    maps = attention_maps(model, image, prompt, args.query, args.layers)
    layers = args.layers or list(range(1, len(maps) + 1))
    for path in save_heatmaps(image, maps, folder, layers):
        print(path)
    print(folder / "attention.npy")
    return 0
