"""Score one (image, prompt, response) with a saved mmrm reward model, without mmrm.

    python examples/score_without_mmrm.py RM_DIR IMAGE "prompt" "response"
"""
import json
import sys

import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

rm_dir, image, prompt, response = sys.argv[1:5]
model = AutoModelForImageTextToText.from_pretrained(rm_dir).eval()
processor = AutoProcessor.from_pretrained(rm_dir)
head = load_file(f"{rm_dir}/value_head.safetensors")
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
            {"role": "assistant", "content": [{"type": "text", "text": response}]}]
text = processor.apply_chat_template(messages, tokenize=False)
inputs = processor(text=[text], images=[Image.open(image).convert("RGB")], return_tensors="pt")
with torch.no_grad():
    hidden = model.model(**inputs).last_hidden_state[0, -1]   # last token (no padding)
reward = (hidden @ head["weight"][0] + head["bias"][0]).item()
config = json.load(open(f"{rm_dir}/reward_config.json"))
normalized = (reward - config["reward_mean"]) / config["reward_std"]
print(json.dumps({"reward": reward, "normalized": normalized}))
