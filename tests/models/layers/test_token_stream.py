"""TokenLayout: one stream of text and codes in both orders, its roles and its sampling prefix."""

import torch

from mmgen_lightning.models.layers.token_stream import CODE, SPECIAL, TEXT, TokenLayout


def test_stream_layout_round_trips_in_both_orders():
    layout = TokenLayout(text_vocab_size=10, num_codes=7, text_length=5, grid=(2, 3))
    text = torch.tensor([[1, 4, 5, 2, 0], [1, 6, 2, 0, 0], [1, 7, 8, 9, 2]])
    codes = torch.randint(0, 7, (3, 6))
    codes_first = torch.tensor([False, True, True])
    ids = layout.build(text, codes, codes_first)
    assert ids.shape == (3, layout.length) == (3, 5 + 6 + 2)
    back_text, back_codes = layout.split(ids, codes_first)
    assert torch.equal(back_text, text) and torch.equal(back_codes, codes)
    assert ids[0].tolist() == [1, 4, 5, 2, 0, layout.sep_image_id, *(codes[0] + 10).tolist(), 2]
    assert ids[1].tolist() == [1, *(codes[1] + 10).tolist(), layout.sep_text_id, 6, 2, 0, 0, 2]
    role, index = layout.roles(codes_first)
    assert ((ids >= 10) & (ids < 17)).eq(role == CODE).all()  # codes sit exactly in the code slots
    assert (role[1] == TEXT).sum() == 4 and (role == SPECIAL).sum(1).tolist() == [3, 3, 3]
    assert index[0][role[0] == CODE].tolist() == list(range(6)) and index[1][role[1] == TEXT].tolist() == [1, 2, 3, 4]
    for row, first in enumerate(codes_first.tolist()):  # the sampling prefix is the stream up to the separator
        prefix = layout.prefix(codes[row:row + 1] if first else text[row:row + 1], first)
        assert torch.equal(prefix[0], ids[row, : prefix.shape[1]])
