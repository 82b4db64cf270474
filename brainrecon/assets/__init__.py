"""A small trained model set for the simulated world (CLIP, VAE, unCLIP-style decoder).

The set is trained on simulator scenes and captions by `brainrecon assets train`
and saved in the same transformers/diffusers layouts as real checkpoints, so the
embedders and generators in `brainrecon.embed` / `brainrecon.generate` load it
unchanged. It is a testbed, not a substitute for real CLIP / unCLIP weights.

The shipped set lives in `SIMWORLD_ASSETS`:

- `clip/`     a transformers `CLIPModel` + byte-level tokenizer + preprocessor config
              (`ClipImageEmbedder(SIMWORLD_ASSETS / "clip")`, `ClipTextEmbedder(...)`);
- `decoder/`  a `StableUnCLIPImg2ImgPipeline` directory whose `vae/` is the small VAE
              (`UnclipGenerator(SIMWORLD_ASSETS / "decoder")`, `VaePath(SIMWORLD_ASSETS / "decoder")`);
- `manifest.json` how it was trained and how well it decodes.

Code: `train` (the three models, resumable), `tune` (guidance on validation scenes), `check`
(held-out decoding quality and the grid), with `scenes` (the disjoint scene sets) and `manifest`
(the set's manifest.json) shared between them.
"""

from brainrecon.pretrained import SIMWORLD_ASSETS

__all__ = ["SIMWORLD_ASSETS"]
