"""The chat template rendered once and filled per item equals rendering every item, and falls
back to rendering where the template does more than insert the text."""

from mmrm.data import FilledTemplate, filled_template


class FakeProcessor:
    """``apply_chat_template`` over mmrm's conversation shape with a text transform."""

    def __init__(self, transform=lambda text: text):
        self.transform = transform
        self.calls = 0

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        self.calls += 1
        out = ""
        for message in messages:
            text = "".join(c.get("text", "<image>") for c in message["content"])
            out += f"<{message['role']}>{self.transform(text)}</s>"
        return out + ("<assistant>" if add_generation_prompt else "")


def test_verbatim_template_is_filled_without_rendering_again():
    processor = FakeProcessor()
    template = FilledTemplate(processor)
    assert template.exact
    calls = processor.calls
    prompt, response = "  What is it?\n", "A red {{ circle }}. "
    assert template.full(prompt, response) == template.render(prompt, response)
    assert template.prefix(prompt) == template.render(prompt, None)
    assert template.full(prompt, response).startswith(template.prefix(prompt))
    assert processor.calls == calls + 2             # only the two checking renders above


def test_trimming_template_falls_back_to_rendering():
    template = FilledTemplate(FakeProcessor(str.strip))
    assert not template.exact
    assert template.full(" Is it red? ", " Yes. ") == \
        "<user><image> Is it red?</s><assistant>Yes.</s>"
    assert template.prefix(" Is it red? ") == "<user><image> Is it red?</s><assistant>"


def test_a_batch_whose_first_item_renders_differently_turns_filling_off():
    processor = FakeProcessor(lambda text: text.replace("&", "&amp;"))
    assert filled_template(processor).exact          # the probes have no "&"
    template = filled_template(processor, ("Salt & pepper?", "Both."))
    assert template is filled_template(processor) and not template.exact
    assert template.full("A & B", "C") == "<user><image>A &amp; B</s><assistant>C</s>"
