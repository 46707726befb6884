"""dino_vla: instruction-driven perception and grasping for ROS 2.

The ROS-free core (models, pipeline, geometry, policy, sim) imports no rclpy; dino_vla.ros holds the
thin nodes and dino_vla.msg the generated interfaces.
"""
from pkgutil import extend_path

# rosidl installs the generated dino_vla.msg into the installed copy of this package. A source
# checkout that comes first on sys.path (running from the repo root) would otherwise hide it:
# extending __path__ lets the sources and the installed interfaces resolve together.
__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
