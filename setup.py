"""vit_jax: Vision Transformers and the papers built on them, in JAX/Flax."""

from setuptools import find_packages, setup

# Ranges: floors are the versions tested here; ceilings stop at the next minor/major release whose API may move
# (flax, optax and orbax change between minors).
INSTALL_REQUIRES = [
    'jax>=0.10.2,<0.11',
    'jaxlib>=0.10.2,<0.11',
    'flax>=0.12.8,<0.13',
    'optax>=0.2.8,<0.3',
    'orbax-checkpoint>=0.12.8,<0.13',
    'chex>=0.1.92,<0.2',
    'ml-collections>=1.1.0,<2',
    'tensorflow-cpu>=2.21.0,<2.22',  # tf.data only; the model never runs in TensorFlow.
    'tensorflow-datasets>=4.9.10,<4.10',
    'tensorboard>=2.21.0,<2.22',  # tensorflow-cpu does not pull it in; the trainer writes TensorBoard events.
    'numpy>=2.0,<3',
    'scipy>=1.13,<2',
    'scikit-learn>=1.9.1,<1.10',  # The built-in UCI digits dataset and linear probes.
    'pillow>=11,<14',
    'absl-py>=2.1,<3',
    'matplotlib>=3.9,<4',
]

TEST_REQUIRES = [
    'pytest>=9.0,<10',
    'pytest-xdist>=3.8,<4',
    'torch==2.13.0',  # CPU build, for parity tests against PyTorch implementations.
    'transformers>=5.23.0,<5.24',
    'nbclient>=0.11,<0.12',
    'nbformat>=5.10,<6',
    'ipykernel>=6.29,<8',
    'ruff>=0.8,<1',
]

setup(
    name='vit_jax',
    version='0.1.0',
    description='Vision Transformers and the papers built on them, in JAX/Flax.',
    long_description=open('README.md').read() if __import__('os').path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['vit_jax', 'vit_jax.*']),
    python_requires='>=3.11',  # jax/jaxlib 0.10, flax 0.12, orbax 0.12, numpy 2.4 and scipy 1.17 need 3.11.
    install_requires=INSTALL_REQUIRES,
    extras_require={'test': TEST_REQUIRES},
    entry_points={'console_scripts': ['vit_jax=vit_jax.main:run']},
    license='Apache-2.0',
)
