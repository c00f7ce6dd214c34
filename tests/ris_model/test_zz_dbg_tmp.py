import torch
from tests.ris_model.test_estimators_omp import *
def test_dbg():
    y, H, codes, (truth, mask) = noise_free_scenes([1,2,3])
    grid = SearchGrid.uniform(SYSTEM)
    res = somp(y, H, codes, grid, snr_db=torch.full((3,), 40.0), refine_iters=8, n_cyclic=5)
    e=res.residual_energy
    print(torch.get_num_threads(), res.estimate.k.tolist(), (e/e[:,:1]).numpy().round(7).tolist())
    assert False
