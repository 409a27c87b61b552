"""NumPy references shared by several test files (written from the definitions, with loops).

Tests import it as ``from references import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""

import numpy as np


def np_decode(hm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HRNet's get_final_preds for one [h, w, J] map, with loops: (coords [J, 2], maxvals)."""
    h, w, j = hm.shape
    coords, maxvals = np.zeros((j, 2)), np.zeros(j)
    for k in range(j):
        m = hm[:, :, k]
        y, x = divmod(int(np.argmax(m)), w)
        maxvals[k] = m[y, x]
        px, py = float(x), float(y)
        if 1 < x < w - 1 and 1 < y < h - 1:
            px += 0.25 * np.sign(m[y, x + 1] - m[y, x - 1])
            py += 0.25 * np.sign(m[y + 1, x] - m[y - 1, x])
        coords[k] = (px, py) if maxvals[k] > 0 else (0.0, 0.0)
    return coords, maxvals
