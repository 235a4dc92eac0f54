"""Name lists for iGSM structure graphs: four 4-level hierarchies, one item list per category.

Our own lists (not the paper's). Every name is unique across all lists, no item name equals a
category name, and every name forms its plural by appending "s" (the question text relies on it).
"""

from __future__ import annotations

# hierarchy -> ((category, items), ...) from the top level down.
HIERARCHIES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "market": (
        ("District", ("Riverside", "Hillcrest", "Oakwood", "Lakeview", "Northgate", "Brookfield",
                      "Stonebridge", "Maplewood", "Eastbury", "Westfield")),
        ("Supermarket", ("Fresh Mart", "Green Grocer", "Corner Market", "Food Hall", "Daily Market",
                         "Sun Mart", "Family Grocer", "City Market")),
        ("Product", ("Bagel", "Muffin", "Cookie", "Granola Bar", "Pizza", "Dumpling", "Pretzel",
                     "Cracker", "Waffle", "Scone")),
        ("Ingredient", ("Flour Scoop", "Sugar Cube", "Egg", "Butter Stick", "Raisin", "Almond",
                        "Oat Flake", "Cocoa Bean", "Vanilla Pod", "Walnut")),
    ),
    "zoo": (
        ("Zoo", ("Harbor Zoo", "Pine Valley Zoo", "Cedar Park Zoo", "Meadow Zoo", "Summit Zoo",
                 "Bayside Zoo", "Canyon Zoo", "Willow Zoo")),
        ("Enclosure", ("Reptile House", "Aviary", "Savanna Pen", "Penguin Pool", "Night House",
                       "Big Cat Den", "Wetland Pen", "Desert Dome")),
        ("Animal", ("Lion", "Zebra", "Giraffe", "Camel", "Otter", "Parrot", "Kangaroo", "Tiger",
                    "Elephant", "Flamingo", "Gorilla", "Meerkat")),
        ("Bone", ("Skull", "Rib", "Femur", "Jawbone", "Collarbone", "Kneecap", "Shoulder Blade",
                  "Hip Bone", "Toe Bone", "Breastbone")),
    ),
    "school": (
        ("School", ("Oak Ridge High", "Hillside Elementary", "Lakeside Academy", "Northwood High",
                    "Brightwater School", "Elm Street Middle", "Valley Prep", "Summit Academy")),
        ("Classroom", ("Film Studio", "Dance Studio", "Art Room", "Music Room", "Chemistry Lab",
                       "Computer Lab", "Robotics Lab", "Drama Room", "Biology Lab")),
        ("Backpack", ("School Daypack", "Messenger Bag", "Hiking Pack", "Rolling Bag", "Sling Bag",
                      "Canvas Tote", "Drawstring Bag", "Laptop Bag")),
        ("Tool", ("Pencil", "Eraser", "Ruler", "Marker", "Crayon", "Notebook", "Stapler",
                  "Highlighter", "Sharpener", "Glue Stick", "Protractor", "Folder")),
    ),
    "ecosystem": (
        ("Ecosystem", ("Coral Reef", "Tropical Forest", "Tundra", "Grassland", "Mangrove Swamp",
                       "Alpine Meadow", "Kelp Forest", "Desert Oasis", "Peat Bog", "Salt Marsh")),
        ("Creature", ("Sea Turtle", "Sea Urchin", "Tree Frog", "Snow Hare", "Barn Owl", "River Trout",
                      "Hermit Crab", "Honeybee", "Salamander", "Wild Boar")),
        ("Organ", ("Heart", "Lung", "Liver", "Kidney", "Stomach", "Brain", "Gill", "Spleen",
                   "Intestine", "Bladder")),
        ("Cell", ("Neuron", "Platelet", "Myocyte", "Neutrophil", "Macrophage", "Fibroblast",
                  "Hepatocyte", "Osteocyte", "Lymphocyte", "Erythrocyte")),
    ),
}
