"""The option schema (d2csr/options_schema.py) knows every key the shipped option files use, and each of them
passes: a key that d2csr starts to read must be added to the schema, or these files would be refused."""
from pathlib import Path

import pytest
import yaml

from d2csr.options_schema import schema_problems

OPTIONS = sorted((Path(__file__).resolve().parents[1] / 'options').glob('*.yml'))


@pytest.mark.parametrize('path', OPTIONS, ids=[p.name for p in OPTIONS])
def test_every_shipped_option_file_passes_the_schema(path):
    opt = yaml.safe_load(path.read_text())
    opt['is_train'] = path.name.startswith('train_')
    assert schema_problems(opt) == []


def test_the_schema_catches_what_the_shipped_files_would_hide():
    """One key of each section misspelt, one value of each kind wrong: every one is found."""
    opt = yaml.safe_load((Path(__file__).resolve().parents[1] / 'options' / 'train_D2C_div_x4.yml').read_text())
    opt['is_train'] = True
    opt['num_gpu'] = 'two'
    opt['logger']['print_frq'] = opt['logger'].pop('print_freq')
    opt['network_g']['num_blocks'] = opt['network_g'].pop('num_block')
    opt['val']['metrics']['ssim']['test_y_chanel'] = True
    opt['train']['scheduler']['milestone'] = opt['train']['scheduler'].pop('milestones')
    opt['train']['optim_g']['beta'] = [0.9, 0.99]
    opt['train']['stage'] = 'divergance'
    opt['datasets']['train']['use_flip'] = True
    opt['path']['resume'] = None
    problems = '\n'.join(schema_problems(opt))
    for expected in ("num_gpu must be an integer or auto, got the text 'two'",
                     'logger:print_frq is not an option (did you mean print_freq?)',
                     'network_g:num_blocks is not an option of D2CSR (did you mean num_block?)',
                     'val:metrics:ssim:test_y_chanel is not an option of calculate_ssim (did you mean test_y_channel?)',
                     'train:scheduler:milestone is not an option of MultiStepRestartLR (did you mean milestones?)',
                     'train:optim_g:beta is not an option of Adam (did you mean betas?)',
                     "train:stage must be one of divergence, convergence, joint, got 'divergance' (did you mean "
                     "divergence?)",
                     'datasets:train:use_flip is not an option (did you mean use_hflip?)',
                     'path:resume is not an option (did you mean resume_state?)'):
        assert expected in problems, expected
    assert 'milestones is missing' not in problems  # said with the misspelt key


def test_misspelt_d2csr_type_names_get_a_suggestion():
    """d2csr's names are not in BasicSR's registry tables (d2csr.utils.registry), but "did you mean" knows them."""
    opt = yaml.safe_load((Path(__file__).resolve().parents[1] / 'options' / 'train_D2C_div_x4.yml').read_text())
    opt['is_train'] = True
    opt['model_type'] = 'D2CModle'
    opt['network_g']['type'] = 'D2CRS'
    opt['datasets']['train']['type'] = 'RealSRDatset'
    problems = '\n'.join(schema_problems(opt))
    for expected in ("model_type 'D2CModle' is not a registered model (did you mean D2CModel?)",
                     "network_g:type 'D2CRS' is not a registered architecture (did you mean D2CSR?)",
                     "datasets:train:type 'RealSRDatset' is not a registered data set (did you mean RealSRDataset?)"):
        assert expected in problems, (expected, problems)
