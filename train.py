"""Train, validate or test an intervention from the command line.

python train.py fit --config configs/ioi/activscalar.yaml
python train.py fit --config configs/ioi/activscalar.yaml --print_config
python train.py fit --config configs/ioi/activscalar.yaml --ckpt_path last   # resume
"""

from interventions.cli import main

if __name__ == "__main__":
    main()
