"""Rewards from a running ``mmrm serve`` in an RL loop: a TRL GRPO reward function and the two
endpoints. The client is ``mmrm/serve/client.py`` (standard library only: copy that one file
to a machine without mmrm).

    mmrm serve runs/pipeline/models/povid/none/final --port 8000
    python examples/reward_client.py --url http://127.0.0.1:8000 --image photo.png

    # TRL: a prompt's G completions go to the server as one item (its image encoded once)
    from trl import GRPOTrainer
    trainer = GRPOTrainer(model=policy, reward_funcs=[MmrmReward("http://127.0.0.1:8000")],
                          train_dataset=dataset_with_an_image_column, ...)

    # OpenRLHF: --remote_rm_url http://127.0.0.1:8000/get_reward, the server started with
    # images_from= the prompts file (OpenRLHF sends no images)
"""

from mmrm.serve.client import MmrmReward, get_reward, main, score  # noqa: F401

if __name__ == "__main__":
    main()
